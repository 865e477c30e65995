"""The whole system, through its HTTP interfaces: broker, load generator and clients
running as real gunicorn+gevent processes in Docker Compose."""

from __future__ import annotations

import json
import uuid

from cloudevents.core.bindings.http import to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from groker_common.testing import poll

from .conftest import CLIENTS, System


def marker(system: System, mode: str = "sync") -> dict:
    """Publish a uniquely tagged message and return the broker's answer."""
    status, answer = system.publish({"marker": uuid.uuid4().hex}, mode=mode)
    assert status == (200 if mode == "sync" else 202), answer
    return answer


def seqs_between(messages: list[dict], first: int, last: int) -> list[int]:
    return [m["seq"] for m in messages if first <= m["seq"] <= last]


def test_every_client_gets_every_message_in_seq_order(three_clients: System):
    system = three_clients
    start = marker(system)
    poll(lambda: system.stats()["last_seq"] >= start["seq"] + 15, what="15 more messages")
    end = marker(system)
    expected = list(range(start["seq"], end["seq"] + 1))
    callbacks = [s["callback"] for s in system.subscriptions()]
    assert len(callbacks) == CLIENTS
    for callback in callbacks:
        # Sync publishes and async ones from the load generator, all in one order.
        assert seqs_between(system.received(callback), start["seq"], end["seq"]) == expected


def test_sync_publish_answers_after_delivery_to_every_client(three_clients: System):
    system = three_clients
    answer = marker(system, "sync")
    assert (answer["status"], answer["delivered"], answer["failed"]) == ("published", CLIENTS, 0)
    for sub in system.subscriptions():  # already there when the answer came back
        assert answer["id"] in {m["id"] for m in system.received(sub["callback"])}


def test_async_publish_is_queued_then_published_and_pollable(three_clients: System):
    system = three_clients
    answer = marker(system, "async")
    assert answer["status"] == "queued"
    polled = poll(
        lambda: (m := system.message(answer["id"]))["status"] == "published" and m,
        what="publication",
    )
    assert (polled["seq"], polled["delivered"]) == (answer["seq"], CLIENTS)


def test_async_notifications_reach_the_server(three_clients: System):
    system = three_clients
    before = system.server_stats()
    before_failed = system.stats()["notifications_failed"]
    poll(
        lambda: system.server_stats()["confirmed_async"] >= before["confirmed_async"] + 3,
        what="three more async confirmations at the server",
    )
    # Every notification came signed with the deployment's callback secret.
    assert system.server_stats()["bad_signatures"] == before["bad_signatures"]
    assert system.stats()["notifications_failed"] == before_failed


def test_a_new_client_gets_only_messages_published_after_it_joined(three_clients: System):
    system = three_clients
    old = {s["id"] for s in system.subscriptions()}
    before = marker(system)  # published before the fourth client exists
    system.scale_clients(CLIENTS + 1)
    (new,) = [s for s in system.subscriptions() if s["id"] not in old]
    poll(lambda: len(system.received(new["callback"])) >= 5, what="the new client's messages")
    seqs = [m["seq"] for m in system.received(new["callback"])]
    assert min(seqs) > before["seq"]
    assert seqs == sorted(set(seqs))
    assert before["id"] not in {m["id"] for m in system.received(new["callback"])}


def test_a_stopped_client_is_removed(three_clients: System):
    system = three_clients
    container = system.client_containers()[0]
    callback = f"http://{system.container_ip(container)}:8002/messages"
    unsubscribed = system.stats()["unsubscribed"]
    system.docker("stop", container)  # SIGTERM: it unsubscribes on the way out
    try:
        assert callback not in {s["callback"] for s in system.subscriptions()}
        assert system.stats()["unsubscribed"] == unsubscribed + 1
        answer = marker(system)
        assert answer["delivered"] == CLIENTS - 1
    finally:
        system.docker("start", container)


def test_an_unreachable_client_is_removed_and_others_keep_receiving(three_clients: System):
    system = three_clients
    container = system.client_containers()[0]
    callback = f"http://{system.container_ip(container)}:8002/messages"
    removed = system.stats()["removed"]
    system.docker("pause", container)  # hangs: deliveries to it time out
    try:
        poll(
            lambda: callback not in {s["callback"] for s in system.subscriptions()},
            what="the paused client's removal",
        )
        assert system.stats()["removed"] == removed + 1
        answer = marker(system)
        assert (answer["delivered"], answer["failed"]) == (CLIENTS - 1, 0)
    finally:
        system.docker("unpause", container)
    # Back, it notices the broker forgot it and subscribes again.
    poll(
        lambda: callback in {s["callback"] for s in system.subscriptions()},
        what="the client's resubscription",
    )


def test_with_no_clients_a_message_waits_and_is_delivered_when_one_starts(system: System):
    system.scale_clients(0)
    answer = marker(system, "async")
    assert system.message(answer["id"])["status"] == "queued"
    assert system.stats()["queue_length"] >= 1
    system.scale_clients(1)
    published = poll(
        lambda: (m := system.message(answer["id"]))["status"] == "published" and m,
        what="publication once a client subscribed",
    )
    assert published["delivered"] == 1
    (sub,) = system.subscriptions()
    assert answer["id"] in {m["id"] for m in system.received(sub["callback"])}


def test_dashboard_metrics_and_document_are_served_by_the_deployment(three_clients: System):
    system = three_clients
    status, page = system.http.request("GET", f"{system.broker_url}/", b"", {}, timeout=10)
    assert status == 200 and b'id="queue-length"' in page
    snapshot = system.call("GET", f"{system.broker_url}/dashboard/snapshot")[1]
    assert len(snapshot["subscribers"]) == CLIENTS
    metrics = {}
    for url in (system.broker_url, system.server_url):
        status, raw = system.http.request("GET", f"{url}/metrics", b"", {}, timeout=10)
        assert status == 200
        metrics[url] = raw.decode()
    assert f"groker_subscribers {float(CLIENTS)}" in metrics[system.broker_url]
    assert "groker_server_confirmed_total" in metrics[system.server_url]
    callback = system.subscriptions()[0]["callback"]
    status, raw = system.http.request("GET", callback.replace("/messages", "/metrics"), b"", {})
    assert status == 200 and b"groker_client_received_total" in raw
    assert system.call("GET", f"{system.broker_url}/openapi.json")[1]["openapi"] == "3.1.0"


def test_cloudevents_subscribers_get_each_message_as_the_same_event(three_clients: System):
    """Two more clients subscribe for CloudEvents: one in binary mode, one at a time, one
    in structured mode taking batches (application/cloudevents-batch+json); both read
    deliveries with the SDK. A CloudEvent published (structured, sync) reaches both as the
    same event (id, source, type, extension) with its seq, and so does each message of
    the load generator's as a groker.message event, in seq order."""
    system = three_clients
    old = {s["id"] for s in system.subscriptions()}
    runs = []
    try:
        for mode, batch in (("binary", "1"), ("structured", "10")):
            output = system.compose(
                "run", "-d", "--no-deps", "-e", "GROKER_FORMAT=cloudevents",
                "-e", f"GROKER_CLOUDEVENTS_MODE={mode}", "-e", f"GROKER_MAX_BATCH={batch}",
                "client",
            )  # fmt: skip
            runs.append(output.split()[-1])
        poll(lambda: len(system.subscriptions()) == CLIENTS + 2, what="both subscribed")
        joined = [s for s in system.subscriptions() if s["id"] not in old]
        assert sorted((s["format"], s["cloudevents_mode"], s["max_batch"]) for s in joined) == [
            ("cloudevents", "binary", 1),
            ("cloudevents", "structured", 10),
        ]
        event = CloudEvent(
            {
                "id": f"e2e-{uuid.uuid4().hex}",
                "source": "/e2e/orders",
                "type": "com.example.order.placed",
                "ordernumber": 17,
            },
            {"order": 17, "items": ["sku-1"]},
        )
        sent = to_structured(event, JSONFormat())
        status, raw = system.http.request(
            "POST",
            f"{system.broker_url}/messages",
            sent.body,
            {
                **sent.headers,
                "groker-mode": "sync",
                "Authorization": f"Bearer {system.token_for('POST', '/messages')}",
            },
            timeout=30,
        )
        answer = json.loads(raw)
        assert (status, answer["delivered"]) == (200, CLIENTS + 2), answer
        # A message published without a CloudEvent goes out as the broker's own event.
        tag = {"marker": uuid.uuid4().hex}
        status, plain = system.publish(tag, mode="sync")
        assert (status, plain["delivered"]) == (200, CLIENTS + 2), plain
        for subscription in joined:
            received = system.received(subscription["callback"])
            (got,) = [m for m in received if m["id"] == event.get_id()]
            attributes = got["cloudevent"]
            assert (got["seq"], got["body"]) == (answer["seq"], event.get_data())
            assert attributes["source"] == "/e2e/orders"
            assert attributes["type"] == "com.example.order.placed"
            # binary mode carries extensions as header strings
            assert str(attributes["ordernumber"]) == "17" and attributes["seq"] == answer["seq"]
            (own,) = [m for m in received if m["id"] == plain["id"]]
            assert own["cloudevent"]["type"] == "groker.message"
            assert (own["seq"], own["body"]) == (plain["seq"], tag)
            seqs = [m["seq"] for m in received]
            assert seqs == sorted(set(seqs))
    finally:
        for container in runs:
            system.docker("rm", "-f", container)
        for subscription in system.subscriptions():
            if subscription["id"] not in old:
                system.broker("DELETE", f"/subscriptions/{subscription['id']}")
