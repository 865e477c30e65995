"""The load generator's HTTP API: the notification webhook and its stats."""

from __future__ import annotations

import logging
from typing import cast

from flask import Blueprint, request

from groker_common.signatures import WebhookVerificationError, verify
from groker_common.web import app_state, error
from server.state import ServerState
from server.stats import PublishStats

log = logging.getLogger(__name__)
api = Blueprint("api", __name__)


def _state() -> ServerState:
    return cast(ServerState, app_state())


def _stats() -> PublishStats:
    return _state().stats


@api.post("/notifications")
def notification():
    """The broker tells us an async message of ours was published."""
    secret = _state().settings.callback_secret
    if secret:
        try:
            verify(secret, request.get_data(cache=True), request.headers)
        except WebhookVerificationError:
            _stats().bad_signatures += 1
            log.warning("refused a notification with a missing, wrong or stale signature")
            return error(401, "bad signature", "missing, wrong or stale webhook signature")
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
    publisher = _state().publisher
    answer = _stats().as_dict(with_ids=request.args.get("ids") == "1")
    # in_flight: messages being published or retried now (0 once everything settled)
    return {
        **answer,
        "in_flight": publisher.in_flight,
        "rate": publisher.rate,
        "sync_ratio": publisher.sync_ratio,
    }


@api.put("/rate")
def set_rate():
    """Change the load while running: {"rate": messages/s (0 pauses), "sync_ratio": 0..1}."""
    spec = request.get_json(silent=True)
    rate = spec.get("rate") if isinstance(spec, dict) else None
    ratio = spec.get("sync_ratio") if isinstance(spec, dict) else None
    if not (
        isinstance(rate, int | float)
        and 0 <= rate <= 10_000
        and (ratio is None or (isinstance(ratio, int | float) and 0 <= ratio <= 1))
    ):
        return error(400, "invalid rate", '{"rate": 0-10000, "sync_ratio": 0-1 (optional)}')
    publisher = _state().publisher
    publisher.set_rate(float(rate), None if ratio is None else float(ratio))
    return {"rate": publisher.rate, "sync_ratio": publisher.sync_ratio}
