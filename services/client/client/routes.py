"""The subscriber's HTTP API: the webhook the broker calls, and what it received."""

from __future__ import annotations

from typing import cast

from flask import Blueprint, current_app, request

from client.inbox import Inbox
from groker_common.web import error

api = Blueprint("api", __name__)


def _inbox() -> Inbox:
    return cast(Inbox, current_app.extensions["groker_inbox"])


@api.post("/messages")
def receive():
    message = request.get_json(silent=True)
    if not (
        isinstance(message, dict)
        and isinstance(message.get("id"), str)
        and isinstance(message.get("seq"), int)
        and "body" in message
    ):
        return error(400, "invalid delivery", "expected a JSON object with id, seq and body")
    fresh = _inbox().add(message)
    return {"ok": True, "duplicate": not fresh}


@api.get("/messages")
def recent():
    inbox = _inbox()
    subscription = current_app.extensions["groker_subscription"]
    return {
        "subscription_id": subscription.id,
        "callback": subscription.callback,
        "received": inbox.received,
        "duplicates": inbox.duplicates,
        "messages": inbox.recent(),
    }
