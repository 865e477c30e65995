"""Batch publishing (POST /messages/batch): many messages in one request and one durable
write, with consecutive seqs in the order given, accepted whole or not at all, sync or async,
and published once with an Idempotency-Key."""

from __future__ import annotations

import json

import gevent
import gevent.event
import pytest

from broker.errors import QueueFull, StoreError
from broker.wiring import build_broker
from groker_common.signatures import verify
from groker_common.testing import wait_until

from .conftest import settings_for_tests


def batch(*bodies, **fields) -> dict:
    return {"messages": [{"body": body} for body in bodies], **fields}


def test_an_async_batch_gets_consecutive_seqs_in_order_and_is_delivered_so(client, make_sink):
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    client.post("/messages", json={"body": "before"})
    answer = client.post("/messages/batch", json=batch("a", "b", {"c": [1]}))
    assert answer.status_code == 202
    messages = answer.get_json()["messages"]
    assert [m["seq"] for m in messages] == [2, 3, 4]
    assert {m["status"] for m in messages} == {"queued"}
    wait_until(lambda: len(sink.received) == 4, what="every message delivered")
    assert [m["body"] for m in sink.received] == ["before", "a", "b", {"c": [1]}]
    assert [m["id"] for m in sink.received[1:]] == [m["id"] for m in messages]
    assert client.get("/stats").get_json()["accepted"] == 4


def test_batch_items_keep_their_own_headers(client, make_sink):
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    items = [{"body": 1, "headers": {"kind": "first"}}, {"body": 2}]
    assert client.post("/messages/batch", json={"messages": items}).status_code == 202
    wait_until(lambda: len(sink.received) == 2, what="both delivered")
    assert [m["headers"] for m in sink.received] == [{"kind": "first"}, {}]


def test_a_sync_batch_answers_once_every_message_is_published(make_app, make_sink):
    app = make_app(settings_for_tests(sync_timeout=0.5))
    client = app.test_client()
    timed_out = client.post("/messages/batch", json=batch(1, 2, mode="sync"))
    assert timed_out.status_code == 504  # nobody subscribed: they wait in the queue
    assert [m["status"] for m in timed_out.get_json()["messages"]] == ["queued", "queued"]
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    published = client.post("/messages/batch", json=batch(3, 4, 5, mode="sync"))
    assert published.status_code == 200
    statuses = published.get_json()["messages"]
    assert [(m["seq"], m["status"], m["delivered"]) for m in statuses] == [
        (3, "published", 1),
        (4, "published", 1),
        (5, "published", 1),
    ]
    assert [m["body"] for m in sink.received] == [1, 2, 3, 4, 5]


def test_an_async_batch_notifies_its_callback_once_per_message(client, make_sink):
    sink, notified = make_sink(), make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    answer = client.post("/messages/batch", json=batch("x", "y", callback=notified.url))
    ids = [m["id"] for m in answer.get_json()["messages"]]
    wait_until(lambda: len(notified.received) == 2, what="two notifications")
    assert sorted(n["id"] for n in notified.received) == sorted(ids)
    assert {n["status"] for n in notified.received} == {"published"}


def test_a_batch_the_queue_has_no_room_for_is_refused_whole(make_app):
    app = make_app(settings_for_tests(max_queue_length=5))
    client = app.test_client()
    assert client.post("/messages/batch", json=batch(1, 2, 3)).status_code == 202
    refused = client.post("/messages/batch", json=batch(4, 5, 6))
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    stats = client.get("/stats").get_json()
    assert (stats["accepted"], stats["queue_length"], stats["last_seq"]) == (3, 3, 3)
    assert client.post("/messages/batch", json=batch(4, 5)).get_json()["messages"][0]["seq"] == 4
    with pytest.raises(QueueFull):
        app.extensions["groker"].publish_batch([(6, None)])


def test_a_batch_whose_write_fails_leaves_nothing_behind(valkey_server, make_sink):
    """Valkey stopped while the batch is written: refused (StoreError, a 503), no message
    of it handed out or kept; written whole by the broker that starts over once Valkey is
    back (this one writes nothing more: it cannot tell what the failed write did)."""
    settings = settings_for_tests(store="valkey", valkey_url=valkey_server.url)
    broker = build_broker(settings)
    broker.start()
    try:
        sink = make_sink()
        broker.subscribe(sink.url)
        valkey_server.kill()
        with pytest.raises(StoreError):
            broker.publish_batch([(n, None) for n in range(5)])
        assert (broker.store.unpublished(), broker.counters.accepted) == (0, 0)
    finally:
        broker.stop()
    valkey_server.start()
    again = build_broker(settings)
    again.start()
    try:
        messages, _ = again.publish_batch([(n, None) for n in range(5, 8)])
        wait_until(lambda: len(sink.received) == 3, what="the batch after the outage")
        assert [m["body"] for m in sink.received] == [5, 6, 7]
        assert [m["seq"] for m in sink.received] == [m.seq for m in messages]
    finally:
        again.stop()


def test_a_batch_is_one_durable_write(tmp_path):
    broker = build_broker(settings_for_tests(store="sqlite", db_path=str(tmp_path / "g.db")))
    broker.start()
    try:
        before = broker.store.batches
        broker.publish_batch([(n, None) for n in range(100)])
        assert broker.store.batches == before + 1
    finally:
        broker.stop()


def test_a_batch_with_an_idempotency_key_is_published_once(client):
    key = {"Idempotency-Key": "batch-1"}
    first = client.post("/messages/batch", json=batch(1, 2), headers=key)
    again = client.post("/messages/batch", json=batch(1, 2), headers=key)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/stats").get_json()["accepted"] == 2
    for other in (batch(1, 2, 3), batch(2, 1), batch(1, 2, mode="sync")):
        refused = client.post("/messages/batch", json=other, headers=key)
        assert refused.status_code == 422, other
    # A single publish with a batch's key is another request too, and the other way round.
    assert client.post("/messages", json={"body": 1}, headers=key).status_code == 422
    single = {"Idempotency-Key": "single"}
    client.post("/messages", json={"body": 1}, headers=single)
    assert client.post("/messages/batch", json=batch(1), headers=single).status_code == 422
    assert client.get("/stats").get_json()["accepted"] == 3


def test_a_sync_batch_retried_with_its_key_waits_on_the_same_messages(make_app, make_sink):
    app = make_app(settings_for_tests(sync_timeout=0.3))
    client = app.test_client()
    key = {"Idempotency-Key": "sync-batch"}
    request = batch("p", "q", mode="sync")
    timed_out = client.post("/messages/batch", json=request, headers=key)
    assert timed_out.status_code == 504
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    retried = client.post("/messages/batch", json=request, headers=key)
    assert retried.status_code == 200
    ids = [m["id"] for m in retried.get_json()["messages"]]
    assert ids == [m["id"] for m in timed_out.get_json()["messages"]]
    assert [m["body"] for m in sink.received] == ["p", "q"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"messages": []}', "messages"),
        ('{"messages": [{"body": 1}, {"body": NaN}]}', "messages.1.body"),
        ('{"messages": [{"body": 1}, {"body": 2, "x": 1}]}', "messages.1.x"),
        ('{"messages": [{"body": 1, "headers": {"a": 1}}]}', "messages.0.headers.a"),
        ('{"messages": [{"body": 1}], "mode": "sync", "callback": "http://h/"}', None),
        (json.dumps(batch(*range(4))), "messages"),
    ],
)
def test_a_bad_batch_names_what_is_wrong_and_accepts_nothing(make_app, raw, field):
    app = make_app(settings_for_tests(max_batch=3))
    client = app.test_client()
    answer = client.post("/messages/batch", data=raw, content_type="application/json")
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid request"
    assert answer.get_json()["detail"][0]["field"] == field
    assert client.get("/stats").get_json()["accepted"] == 0


def test_concurrent_batches_keep_their_seqs_together(broker, make_sink):
    sink = make_sink()
    broker.subscribe(sink.url)
    publishers = [
        gevent.spawn(broker.publish_batch, [((b, i), None) for i in range(10)]) for b in range(5)
    ]
    gevent.joinall(publishers, raise_error=True)
    for publisher in publishers:
        messages, _ = publisher.get()
        seqs = [m.seq for m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + 10))
    wait_until(lambda: len(sink.received) == 50, what="every batch delivered")
    assert sink.seqs == list(range(1, 51))


# --- batch delivery: a subscriber that takes up to max_batch messages per POST ---------
def batches_received(sink) -> list[list[dict]]:
    return [json.loads(raw) for raw in sink.raw]


def test_a_batch_subscriber_gets_what_waits_in_arrays_in_seq_order(broker, make_sink):
    hold = gevent.event.Event()
    sink = make_sink(hold=hold)
    subscriber, _ = broker.subscribe(sink.url, max_batch=10)
    messages = [broker.publish({"n": n}) for n in range(25)]
    # The first POST is held; the rest are handed to the lane and wait there.
    wait_until(lambda: sink.hits == 1 and broker.store.queued() == 0, what="all in the lane")
    hold.set()
    wait_until(lambda: sum(len(b) for b in batches_received(sink)) == 25, what="all 25")
    batches = batches_received(sink)
    assert all(isinstance(b, list) and 1 <= len(b) <= 10 for b in batches)
    assert len(batches) < 25  # what waited went together
    assert [m["seq"] for b in batches for m in b] == [m.seq for m in messages]
    # One signature per POST, over the whole array.
    for raw, headers in zip(sink.raw, sink.headers, strict=True):
        signed = {k.removeprefix("HTTP_").replace("_", "-").lower(): v for k, v in headers.items()}
        verify(subscriber.secret, raw, signed)
    wait_until(lambda: broker.stats().counters.published == 25, what="all published")
    assert {m.delivered for m in messages} == {1}


def test_a_batch_subscriber_waits_max_wait_ms_for_more(broker, make_sink):
    sink = make_sink()
    broker.subscribe(sink.url, max_batch=5, max_wait_ms=400)
    broker.publish(1)
    gevent.sleep(0.1)
    broker.publish(2)
    broker.publish(3)
    wait_until(lambda: sink.raw, what="the first POST")
    assert [m["body"] for m in batches_received(sink)[0]] == [1, 2, 3]


def test_a_batch_of_one_is_still_an_array(broker, make_sink):
    sink = make_sink()
    broker.subscribe(sink.url, max_batch=2)
    message = broker.publish("alone", mode="sync")
    assert broker.wait_published(message) == "published"
    (batch,) = batches_received(sink)
    assert isinstance(batch, list)
    assert [m["body"] for m in batch] == ["alone"]


def test_a_failing_batch_subscriber_is_removed_and_its_batch_counts_as_failed(broker, make_sink):
    failing, healthy = make_sink(status=503), make_sink()
    broker.subscribe(failing.url, max_batch=10)
    broker.subscribe(healthy.url)
    messages = [broker.publish(n) for n in range(3)]
    wait_until(lambda: broker.stats().subscribers == 1, what="the failing one removed")
    wait_until(lambda: all(m.status == "published" for m in messages), what="published")
    assert sum(m.failed for m in messages) >= 1
    assert [m["body"] for m in healthy.received] == [0, 1, 2]
    assert failing.hits == broker.settings.delivery_attempts  # the batch, retried whole


def test_a_batch_subscription_keeps_its_batching_across_a_restart(durable_store, make_sink):
    sink = make_sink()
    first = build_broker(durable_store)
    first.start()
    subscriber, _ = first.subscribe(sink.url, max_batch=7, max_wait_ms=20)
    first.stop()
    second = build_broker(durable_store)
    second.start()
    try:
        (restored,) = second.subscriptions()
        assert (restored.id, restored.max_batch, restored.max_wait_ms) == (subscriber.id, 7, 20)
    finally:
        second.stop()


def test_subscribe_takes_and_lists_batching(client, make_sink):
    sink = make_sink()
    created = client.post("/subscriptions", json={"callback": sink.url, "max_batch": 50,
                                                  "max_wait_ms": 100})  # fmt: skip
    assert created.status_code == 201
    listed = client.get("/subscriptions").get_json()["subscriptions"][0]
    assert (listed["max_batch"], listed["max_wait_ms"]) == (50, 100)
    for wrong in ({"max_batch": 0}, {"max_batch": 1001}, {"max_wait_ms": 1001},
                  {"max_batch": "10"}):  # fmt: skip
        refused = client.post("/subscriptions", json={"callback": sink.url + "x", **wrong})
        assert refused.status_code == 400, wrong
