"""The subscriber's HTTP API: the webhook the broker calls, and what it received."""

from __future__ import annotations

from typing import Any, cast

import gevent
from flask import Blueprint, request

from client.inbox import Inbox
from client.state import ClientState, Fault
from groker_common.web import app_state, error
from groker_common.webhooks import Answer, error_answer

api = Blueprint("api", __name__)


def _state() -> ClientState:
    return cast(ClientState, app_state())


def injected_fault(_message: dict[str, Any]) -> Answer | None:
    """The answer PUT /fault set for a valid delivery, after its delay; None when there is
    none (the delivery is taken). Runs inside the request, so it sees the current fault."""
    fault = _state().fault
    if fault.delay:
        gevent.sleep(fault.delay)
    if fault.status is not None:
        return error_answer(fault.status, "injected fault", "PUT /fault set this answer")
    return None


def _inbox() -> Inbox:
    return _state().inbox


@api.post("/messages")
def receive():
    status, answer = _inbox().webhooks.handle(request.get_data(cache=True), request.headers)
    return answer, status


@api.get("/messages")
def recent():
    inbox = _inbox()
    subscription = _state().subscription
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
    if not _state().settings.fault_injection:
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
    _state().fault = Fault(status, float(delay))
    return {"status": status, "delay": delay}
