"""The subscriber against a real broker on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from client.app import create_app
from client.settings import ClientSettings
from groker_common.http import HttpPool
from groker_common.signatures import new_secret, sign
from groker_common.testing import wait_until

http = HttpPool()


@pytest.fixture(autouse=True, scope="module")
def _close_pool() -> Iterator[None]:
    yield
    http.close()


def subscriptions(broker_url: str) -> list[dict]:
    return http.request_json("GET", f"{broker_url}/subscriptions")[1]["subscriptions"]


def test_subscribes_on_start_and_prints_each_message(broker_url, start_client, capsys):
    app = start_client()
    sub = app.extensions["groker"].subscription
    wait_until(lambda: sub.id is not None, what="subscription")
    assert [s["id"] for s in subscriptions(broker_url)] == [sub.id]
    for n in range(3):
        http.request_json("POST", f"{broker_url}/messages", {"body": {"n": n}, "mode": "sync"})
    answer = app.test_client().get("/messages").get_json()
    assert [m["body"] for m in answer["messages"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [m["seq"] for m in answer["messages"]] == [1, 2, 3]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['seq=1 {"n": 0}', 'seq=2 {"n": 1}', 'seq=3 {"n": 2}']


def test_with_max_batch_it_takes_batches_and_prints_every_message(broker_url, start_client, capsys):
    app = start_client(max_batch=20)
    sub = app.extensions["groker"].subscription
    wait_until(lambda: sub.id is not None, what="subscription")
    assert subscriptions(broker_url)[0]["max_batch"] == 20
    batch = {"messages": [{"body": {"n": n}} for n in range(3)], "mode": "sync"}
    status, _ = http.request_json("POST", f"{broker_url}/messages/batch", batch)
    assert status == 200
    answer = app.test_client().get("/messages").get_json()
    assert [m["body"] for m in answer["messages"]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['seq=1 {"n": 0}', 'seq=2 {"n": 1}', 'seq=3 {"n": 2}']


def test_resubscribes_when_the_broker_forgets_it(broker_url, start_client):
    app = start_client(resubscribe_interval=0.05)
    sub = app.extensions["groker"].subscription
    first = wait_until(lambda: sub.id, what="subscription")
    http.request_json("DELETE", f"{broker_url}/subscriptions/{first}")
    wait_until(lambda: sub.id != first and subscriptions(broker_url), what="resubscription")
    assert [s["id"] for s in subscriptions(broker_url)] == [sub.id]


def test_unsubscribes_on_exit(broker_url, start_client):
    app = start_client()
    wait_until(lambda: subscriptions(broker_url), what="subscription")
    app.extensions["groker_on_exit"]()
    assert subscriptions(broker_url) == []


def unsubscribed_app(**settings: Any):
    """A client app that does not subscribe; it holds a secret as if it had."""
    app = create_app(ClientSettings(callback_url="http://127.0.0.1:1/x", **settings), False)
    app.extensions["groker"].subscription.remember({"id": "sub-1", "secret": new_secret()})
    return app


def deliver(app, payload: Any, secret: str | None = None, timestamp: int | None = None):
    """POST a delivery signed the way the broker signs it (by default with the app's secret)."""
    body = json.dumps(payload).encode()
    headers = sign(secret or app.extensions["groker"].subscription.secret, "msg_1", body)
    if timestamp is not None:
        headers = sign_at(secret or app.extensions["groker"].subscription.secret, body, timestamp)
    return app.test_client().post(
        "/messages", data=body, headers=headers, content_type="application/json"
    )


def sign_at(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": Webhook(secret).sign("msg_1", when, body.decode()),
    }


def test_drops_a_redelivered_message_and_refuses_malformed_ones():
    app = unsubscribed_app()
    delivery = {"id": "a", "seq": 7, "body": "hi", "headers": {}, "published_at": 0}
    assert deliver(app, delivery).get_json()["duplicate"] is False
    assert deliver(app, delivery).get_json()["duplicate"] is True
    client = app.test_client()
    for bad in ({"seq": 1, "body": 1}, {"id": "b", "seq": "1", "body": 1}, [1], [], "x"):
        answer = deliver(app, bad)
        assert answer.status_code == 400 and answer.get_json()["error"] == "invalid delivery"
    # A batch (an array): each message taken once, repeats dropped one by one.
    other = delivery | {"id": "b", "seq": 8}
    answer = deliver(app, [delivery, other]).get_json()
    assert (answer["received"], answer["duplicates"]) == (1, 1)
    stats = client.get("/messages").get_json()
    assert (stats["received"], stats["duplicates"]) == (2, 2)
    assert client.get("/healthz").status_code == 200


def test_fault_injection_is_off_unless_enabled_then_fails_deliveries():
    off = unsubscribed_app()
    assert off.test_client().put("/fault", json={"status": 500}).status_code == 404
    app = unsubscribed_app(fault_injection=True)
    client = app.test_client()
    assert client.put("/fault", json={"status": 99}).status_code == 400
    assert client.put("/fault", json={"status": 500}).status_code == 200
    delivery = {"id": "a", "seq": 1, "body": 1}
    assert deliver(app, delivery).status_code == 500
    assert client.put("/fault", json={"status": None}).status_code == 200
    assert deliver(app, delivery).status_code == 200
    assert client.get("/messages").get_json()["received"] == 1


def test_forged_missing_and_stale_signatures_are_refused_and_counted():
    app = unsubscribed_app()
    delivery = {"id": "a", "seq": 1, "body": "forged"}
    assert deliver(app, delivery, secret=new_secret()).status_code == 401  # wrong secret
    plain = app.test_client().post("/messages", json=delivery)  # no signature at all
    assert plain.status_code == 401 and plain.get_json()["error"] == "bad signature"
    stale = deliver(app, delivery, timestamp=int(time.time()) - 600)  # replayed 10 min later
    assert stale.status_code == 401
    stats = app.test_client().get("/messages").get_json()
    assert (stats["bad_signatures"], stats["received"]) == (3, 0)
    metrics = app.test_client().get("/metrics").data.decode()
    assert "groker_client_bad_signatures_total 3.0" in metrics
    assert "groker_client_received_total 0.0" in metrics
    assert deliver(app, delivery).status_code == 200  # the real thing still gets in


def test_answers_the_brokers_subscription_challenge():
    app = unsubscribed_app()
    challenge = {"type": "subscription.verify", "challenge": "c-123"}
    answer = app.test_client().post("/messages", json=challenge)
    assert answer.status_code == 200 and answer.get_json() == {"challenge": "c-123"}


def test_refuses_what_every_groker_receiver_refuses():
    """The rules the client shares with `groker subscribe` (groker_common.webhooks)."""
    app = unsubscribed_app()
    client = app.test_client()
    as_bool = deliver(app, {"id": "a", "seq": True, "body": 1})  # True is an int in Python
    assert as_bool.status_code == 400 and as_bool.get_json()["error"] == "invalid delivery"
    numeric = client.post("/messages", json={"type": "subscription.verify", "challenge": 5})
    assert numeric.status_code == 400
    garbled = sign(app.extensions["groker"].subscription.secret, "msg_1", b"{}")
    garbled["webhook-signature"] = "v1"
    answer = client.post("/messages", data=b"{}", headers=garbled)
    assert answer.status_code == 401 and answer.get_json()["error"] == "bad signature"
    assert client.post("/messages", data=b"{not json").status_code == 400
    assert client.get("/messages").get_json()["received"] == 0


# --- a CloudEvents subscriber: GROKER_FORMAT=cloudevents -----------------------------------
ORDER = {
    "specversion": "1.0",
    "id": "order-7",
    "source": "https://shop.example/orders",
    "type": "com.example.order.created",
    "tenant": "acme",
    "data": {"order": 7},
}


def publish_raw(broker_url: str, path: str, body: Any, content_type: str, **headers: str):
    """POST what a CloudEvents publisher sends, JSON of another content type."""
    status, raw = http.request(
        "POST",
        f"{broker_url}{path}",
        json.dumps(body).encode(),
        {"Content-Type": content_type, **headers},
    )
    return status, json.loads(raw)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_cloudevents_subscriber_prints_and_keeps_each_event(
    broker_url, start_client, capsys, mode
):
    app = start_client(format="cloudevents", cloudevents_mode=mode)
    sub = app.extensions["groker"].subscription
    wait_until(lambda: sub.id is not None, what="subscription")
    (subscribed,) = subscriptions(broker_url)
    assert (subscribed["format"], subscribed["cloudevents_mode"]) == ("cloudevents", mode)
    status, first = http.request_json(
        "POST", f"{broker_url}/messages", {"body": {"n": 0}, "mode": "sync"}
    )
    assert status == 200
    status, _ = publish_raw(
        broker_url, "/messages", ORDER, "application/cloudevents+json", **{"groker-mode": "sync"}
    )
    assert status == 200
    kept = app.test_client().get("/messages").get_json()["messages"]
    assert [(m["seq"], m["body"]) for m in kept] == [(1, {"n": 0}), (2, {"order": 7})]
    # A plain message is groker's own event; a published one keeps its attributes.
    assert kept[0]["id"] == first["id"]
    assert (kept[0]["cloudevent"]["type"], kept[0]["cloudevent"]["source"]) == (
        "groker.message",
        "/groker",
    )
    assert kept[1]["id"] == "order-7"
    assert kept[1]["cloudevent"]["tenant"] == "acme" and kept[1]["cloudevent"]["seq"] == 2
    assert capsys.readouterr().out.splitlines() == [
        f'seq=1 id={first["id"]} type=groker.message source=/groker {{"n": 0}}',
        "seq=2 id=order-7 type=com.example.order.created source=https://shop.example/orders"
        ' {"order": 7}',
    ]


def test_a_cloudevents_subscriber_takes_batches(broker_url, start_client, capsys):
    app = start_client(format="cloudevents", max_batch=20)
    sub = app.extensions["groker"].subscription
    wait_until(lambda: sub.id is not None, what="subscription")
    assert subscriptions(broker_url)[0]["max_batch"] == 20  # arrays of structured events
    events = [{**ORDER, "id": f"order-{n}", "data": {"order": n}} for n in range(3)]
    status, _ = publish_raw(
        broker_url,
        "/messages/batch",
        events,
        "application/cloudevents-batch+json",
        **{"groker-mode": "sync"},
    )
    assert status == 200
    answer = app.test_client().get("/messages").get_json()
    assert [(m["seq"], m["id"], m["body"]) for m in answer["messages"]] == [
        (1, "order-0", {"order": 0}),
        (2, "order-1", {"order": 1}),
        (3, "order-2", {"order": 2}),
    ]
    assert (answer["received"], answer["duplicates"]) == (3, 0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[:2] for line in lines] == [
        ["seq=1", "id=order-0"],
        ["seq=2", "id=order-1"],
        ["seq=3", "id=order-2"],
    ]


def deliver_event(app, body: bytes, headers: dict[str, str]):
    """POST a CloudEvents delivery, signed as the broker signs it."""
    signed = sign(app.extensions["groker"].subscription.secret, "msg_1", body)
    return app.test_client().post("/messages", data=body, headers=headers | signed)


BINARY = {
    "Content-Type": "application/json",
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/sensors/a%20b",
    "ce-type": "com.example.reading",
    "ce-seq": "5",
}


def test_cloudevents_deliveries_drop_repeats_by_source_and_id_and_refuse_junk():
    app = unsubscribed_app()
    client = app.test_client()
    taken = deliver_event(app, b"[21.5]", BINARY)
    assert taken.status_code == 200 and taken.get_json()["duplicate"] is False
    assert deliver_event(app, b"[21.5]", BINARY).get_json()["duplicate"] is True
    # The same id from another source is another event.
    other = BINARY | {"ce-source": "/sensors/c", "ce-seq": "6"}
    assert deliver_event(app, b"[1]", other).get_json()["duplicate"] is False
    # Data that looks like the broker's challenge is data, not a challenge.
    challenge = b'{"type": "subscription.verify", "challenge": "c"}'
    looks = deliver_event(app, challenge, BINARY | {"ce-id": "evt-2", "ce-seq": "7"})
    assert looks.get_json() == {"ok": True, "duplicate": False}
    kept = client.get("/messages").get_json()
    assert [(m["seq"], m["cloudevent"]["source"]) for m in kept["messages"]] == [
        (5, "/sensors/a b"),
        (6, "/sensors/c"),
        (7, "/sensors/a b"),
    ]
    assert (kept["received"], kept["duplicates"]) == (3, 1)
    structured = {"Content-Type": "application/cloudevents+json"}
    batch = {"Content-Type": "application/cloudevents-batch+json"}
    for body, headers in [
        (b"[1]", {k: v for k, v in BINARY.items() if k != "ce-seq"}),  # no groker seq
        (b"[1]", BINARY | {"ce-seq": "five"}),
        (json.dumps(ORDER).encode(), structured),  # no seq either
        (json.dumps({**ORDER, "seq": 1, "specversion": "0.3"}).encode(), structured),
        (b"{not json", structured),
        (b"[]", batch),
        (json.dumps({**ORDER, "seq": 1}).encode(), batch),  # an event, not a batch
        (json.dumps([{**ORDER, "seq": 1}, 7]).encode(), batch),
    ]:
        refused = deliver_event(app, body, headers)
        assert refused.status_code == 400, (body, headers)
        assert refused.get_json()["error"] == "invalid delivery"
    assert client.get("/messages").get_json()["received"] == 3
    unsigned = client.post("/messages", data=b"[1]", headers=BINARY | {"ce-id": "evt-9"})
    assert unsigned.status_code == 401
