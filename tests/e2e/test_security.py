"""Only the right parties talk, with everything on as deployed: tokens, signed webhooks,
verified subscriptions and the destination guard."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from groker_common.signatures import new_secret, sign

from .conftest import System


def signed_at(secret: str, body: bytes, when: float) -> dict[str, str]:
    """Headers as the broker would have sent them at `when`."""
    stamp = datetime.fromtimestamp(int(when), tz=UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": "msg_e2e",
        "webhook-timestamp": str(int(when)),
        "webhook-signature": Webhook(secret).sign("msg_e2e", stamp, body.decode()),
    }


def post(system: System, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    status, raw = system.http.request("POST", url, body, headers, timeout=10)
    return status, json.loads(raw) if raw else {}


def test_publishing_and_managing_need_their_tokens(three_clients: System):
    system = three_clients
    url = f"{system.broker_url}/messages"
    for token in (None, "wrong", system.tokens["manage"]):
        status, answer = system.call("POST", url, {"body": "no"}, token=token)
        assert (status, answer["error"]) == (401, "unauthorized"), token
    status, _ = system.call("GET", f"{system.broker_url}/subscriptions", token="wrong")
    assert status == 401
    assert system.publish({"with": "token"})[0] == 202


def test_forged_and_replayed_webhooks_to_a_client_are_refused(three_clients: System):
    system = three_clients
    callback = system.subscriptions()[0]["callback"]
    # Subscribing the same callback again (with the manage token) tells its secret.
    status, subscription = system.broker("POST", "/subscriptions", {"callback": callback})
    assert status == 200
    secret = subscription["secret"]
    delivery = {"id": "e2e-forged", "seq": 10**9, "body": "forged", "headers": {}}
    body = json.dumps(delivery).encode()
    now = time.time()
    for headers in (
        {"Content-Type": "application/json"},  # unsigned
        signed_at(new_secret(), body, now),  # someone else's secret
        signed_at(secret, body, now - 600),  # a real signature, replayed 10 minutes later
    ):
        assert post(system, callback, body, headers)[0] == 401
    assert "e2e-forged" not in {m["id"] for m in system.received(callback)}
    # The same delivery, signed now with the real secret, is taken.
    assert post(system, callback, body, signed_at(secret, body, now))[0] == 200
    assert "e2e-forged" in {m["id"] for m in system.received(callback)}


def test_forged_and_replayed_notifications_to_the_server_are_refused(three_clients: System):
    system = three_clients
    secret = system.compose("exec", "-T", "broker", "cat", "/secrets/GROKER_CALLBACK_SECRET")
    url = f"{system.server_url}/notifications"
    note = json.dumps({"id": "e2e-note", "seq": 1, "status": "published"}).encode()
    bad_before = system.server_stats()["bad_signatures"]
    for headers in (
        {"Content-Type": "application/json"},
        signed_at(new_secret(), note, time.time()),
        signed_at(secret.strip(), note, time.time() - 600),
    ):
        assert post(system, url, note, headers)[0] == 401
    assert system.server_stats()["bad_signatures"] == bad_before + 3
    fresh = sign(secret.strip(), "msg_e2e", note) | {"Content-Type": "application/json"}
    assert post(system, url, note, fresh)[0] == 200


def test_subscriptions_that_do_not_echo_or_point_where_they_must_not_are_refused(
    three_clients: System,
):
    system = three_clients
    before = len(system.subscriptions())
    # A real endpoint in the deployment's own network that does not answer the challenge.
    status, answer = system.broker(
        "POST", "/subscriptions", {"callback": "http://server:8001/notifications"}
    )
    assert (status, answer["error"]) == (422, "callback verification failed")
    for refused in (
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: never
        "http://127.0.0.1:8000/messages",  # the broker's own loopback
        "http://10.9.8.7/hook",  # a private network the deployment does not allow
    ):
        status, answer = system.broker("POST", "/subscriptions", {"callback": refused})
        assert (status, answer["error"]) == (403, "callback not allowed"), refused
    status, answer = system.broker(
        "POST", "/messages", {"body": 1, "callback": "http://169.254.169.254/x"}
    )
    assert status == 403
    assert len(system.subscriptions()) == before
