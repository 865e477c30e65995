"""The load generator's HTTP API: the notification webhook and its stats."""

from __future__ import annotations

from typing import cast

from flask import Blueprint, current_app, request

from groker_common.web import error
from server.stats import PublishStats

api = Blueprint("api", __name__)


def _stats() -> PublishStats:
    return cast(PublishStats, current_app.extensions["groker_stats"])


@api.post("/notifications")
def notification():
    """The broker tells us an async message of ours was published."""
    note = request.get_json(silent=True)
    if not isinstance(note, dict) or not isinstance(note.get("id"), str):
        return error(400, "invalid notification", "expected a JSON object with an id")
    if note.get("status") != "published":
        return error(400, "invalid notification", "status must be 'published'")
    stats = _stats()
    if not stats.confirm(note["id"]):
        stats.unknown_notifications += 1
    return {"ok": True}


@api.get("/stats")
def stats():
    return _stats().as_dict(with_ids=request.args.get("ids") == "1")
