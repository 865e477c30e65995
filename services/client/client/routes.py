"""The subscriber's HTTP API: the webhook the broker calls, and what it received."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import gevent
from flask import Blueprint, current_app, request

from client.inbox import Inbox
from groker_common.web import error

api = Blueprint("api", __name__)


@dataclass
class Fault:
    """How this replica misbehaves when told to: answer deliveries with `status` after
    `delay` seconds. Only with GROKER_FAULT_INJECTION=1."""

    status: int | None = None
    delay: float = 0.0


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
    fault: Fault = current_app.extensions["groker_fault"]
    if fault.delay:
        gevent.sleep(fault.delay)
    if fault.status is not None:
        return error(fault.status, "injected fault", "PUT /fault set this answer")
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


@api.put("/fault")
def set_fault():
    if not current_app.config["FAULT_INJECTION"]:
        return error(404, "not found", "fault injection is off (GROKER_FAULT_INJECTION)")
    spec = request.get_json(silent=True)
    status, delay = (spec or {}).get("status"), (spec or {}).get("delay", 0)
    if not (
        isinstance(spec, dict)
        and (status is None or (isinstance(status, int) and 200 <= status <= 599))
        and isinstance(delay, int | float)
        and 0 <= delay <= 600
    ):
        return error(400, "invalid fault", '{"status": 200-599 or null, "delay": seconds}')
    current_app.extensions["groker_fault"] = Fault(status, float(delay))
    return {"status": status, "delay": delay}
