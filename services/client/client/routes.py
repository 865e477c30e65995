"""The subscriber's HTTP API: the webhook the broker calls, and what it received."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import gevent
from flask import Blueprint, current_app, request

from client.inbox import Inbox
from groker_common.web import error
from groker_common.webhooks import Answer, error_answer

api = Blueprint("api", __name__)


@dataclass
class Fault:
    """How this replica misbehaves when told to: answer deliveries with `status` after
    `delay` seconds. Only with GROKER_FAULT_INJECTION=1."""

    status: int | None = None
    delay: float = 0.0


def injected_fault(_message: dict[str, Any]) -> Answer | None:
    """The answer PUT /fault set for a valid delivery, after its delay; None when there is
    none (the delivery is taken). Runs inside the request, so it sees the current fault."""
    fault: Fault = current_app.extensions["groker_fault"]
    if fault.delay:
        gevent.sleep(fault.delay)
    if fault.status is not None:
        return error_answer(fault.status, "injected fault", "PUT /fault set this answer")
    return None


def _inbox() -> Inbox:
    return cast(Inbox, current_app.extensions["groker_inbox"])


@api.post("/messages")
def receive():
    status, answer = _inbox().webhooks.handle(request.get_data(cache=True), request.headers)
    return answer, status


@api.get("/messages")
def recent():
    inbox = _inbox()
    subscription = current_app.extensions["groker_subscription"]
    return {
        "subscription_id": subscription.id,
        "callback": subscription.callback,
        "received": inbox.webhooks.received,
        "duplicates": inbox.webhooks.duplicates,
        "bad_signatures": inbox.webhooks.bad_signatures,
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
