"""The subscriber's HTTP API: the webhook the broker calls, and what it received."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

import gevent
from flask import Blueprint, current_app, request

from client.inbox import Inbox
from groker_common.signatures import WebhookVerificationError, verify
from groker_common.web import error
from groker_common.webhooks import verification_answer

log = logging.getLogger(__name__)

api = Blueprint("api", __name__)


@dataclass
class Fault:
    """How this replica misbehaves when told to: answer deliveries with `status` after
    `delay` seconds. Only with GROKER_FAULT_INJECTION=1."""

    status: int | None = None
    delay: float = 0.0


def _inbox() -> Inbox:
    return cast(Inbox, current_app.extensions["groker_inbox"])


def _signed_with(secret: str | None, raw: bytes) -> bool:
    if secret is None:
        return False
    try:
        verify(secret, raw, request.headers)
    except WebhookVerificationError:
        return False
    return True


def _verified(raw: bytes) -> bool:
    """Is this delivery signed by the broker with our subscription's secret? If not with
    the secret we hold, maybe with the one a subscribe call under way is about to bring."""
    subscription = current_app.extensions["groker_subscription"]
    held = subscription.secret
    if _signed_with(held, raw):
        return True
    settled = subscription.settled_secret()
    return settled != held and _signed_with(settled, raw)


@api.post("/messages")
def receive():
    raw = request.get_data(cache=True)
    challenge = verification_answer(raw)
    if challenge is not None:  # the broker asking whether we want to be subscribed
        return current_app.response_class(challenge, mimetype="application/json")
    if current_app.config["VERIFY_SIGNATURES"] and not _verified(raw):
        inbox = _inbox()
        inbox.bad_signatures += 1
        log.warning("refused a delivery with a missing, wrong or stale signature")
        return error(401, "bad signature", "missing, wrong or stale webhook signature")
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
        "bad_signatures": inbox.bad_signatures,
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
