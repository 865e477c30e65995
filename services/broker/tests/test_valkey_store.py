"""The Valkey store, against a real valkey-server: what it acknowledged survives the store
and Valkey itself being killed, seq never repeats even once all is pruned, a write
that fails (Valkey down, or fenced off) is refused and never handed out, and its waiting
never stalls the other greenlets."""

from __future__ import annotations

import time
import uuid

import gevent
import pytest

from broker.errors import StoreError
from broker.model import Message, Subscriber
from broker.settings import BrokerSettings
from broker.storage.valkey import ValkeyStore
from broker.wiring import build_broker
from groker_common.testing import free_port, wait_until

from .conftest import settings_for_tests
from .valkey_server import ValkeyProcess


def message(seq: int, key: str | None = None, callback: str | None = None) -> Message:
    return Message(
        id=str(uuid.uuid4()),
        seq=seq,
        body_json=f'{{"n":{seq}}}',
        mode="async",
        headers={"x-n": str(seq)},
        callback=callback,
        key=key,
        fingerprint=f"print-{key}" if key else None,
    )


def publish(store: ValkeyStore, delivered: int = 1) -> Message:
    """Take the head and record its publication, as the dispatcher and the lanes would."""
    head = store.take_head()
    head.published_at, head.status, head.delivered = time.time(), "published", delivered
    store.mark_published(head)
    return head


@pytest.fixture
def valkey_settings(valkey_server: ValkeyProcess) -> BrokerSettings:
    return settings_for_tests(store="valkey", valkey_url=valkey_server.url, drain_timeout=1)


def test_what_the_store_wrote_is_there_after_it_is_opened_again(valkey_server):
    store = ValkeyStore(valkey_server.url)
    accepted = [message(n, key=f"k{n}", callback="http://127.0.0.1:9/cb") for n in (1, 2, 3, 4)]
    for m in accepted:
        store.append(m)
    kept, dropped = Subscriber("http://127.0.0.1:9/a"), Subscriber("http://127.0.0.1:9/b")
    store.save_subscription(kept)
    store.save_subscription(dropped)
    store.delete_subscription(dropped.id)
    first = publish(store, delivered=2)
    store.mark_notified(first)
    second = publish(store)
    store.close()

    again = ValkeyStore(valkey_server.url)
    try:
        assert [m.id for m in again.unpublished_messages()] == [accepted[2].id, accepted[3].id]
        assert again.head().seq == 3 and again.last_seq() == 4
        loaded = again.get(first.id)
        assert (loaded.status, loaded.delivered, loaded.notified) == ("published", 2, True)
        assert loaded.published_at == first.published_at
        assert [m.id for m in again.unnotified_messages()] == [second.id]
        queued = again.by_key("k3")
        assert (queued.body_json, queued.headers, queued.fingerprint) == (
            '{"n":3}',
            {"x-n": "3"},
            "print-k3",
        )
        assert again.by_key("k1") is loaded
        assert [(s.id, s.callback, s.secret) for s in again.subscriptions()] == [
            (kept.id, kept.callback, kept.secret)
        ]
    finally:
        again.close()


def test_everything_acknowledged_survives_valkey_killed_with_sigkill(
    valkey_server, valkey_settings, make_sink
):
    """Acknowledged means fsynced (appendfsync always): a valkey-server killed without
    writing anything out reads it all back from its append-only file."""
    sink = make_sink()
    first = build_broker(valkey_settings)
    first.start()
    subscriber, _ = first.subscribe(sink.url)
    first.registry.lanes()[0].close()  # stop delivering, without unsubscribing
    messages = [first.publish({"n": n}) for n in range(20)]
    valkey_server.kill()
    first.stop()  # what it still had to write fails: Valkey is gone

    valkey_server.start()
    second = build_broker(valkey_settings)
    second.start()
    try:
        assert [lane.subscriber.id for lane in second.registry.lanes()] == [subscriber.id]
        wait_until(lambda: len(sink.received) == 20, what="the recovered messages")
        assert sink.seqs == [m.seq for m in messages]
        assert second.publish("next").seq == 21
    finally:
        second.stop()


def test_a_store_carries_on_when_valkey_restarts_under_it(valkey_server):
    """Its pooled connection is dead and Valkey has forgotten the script: both come back."""
    store = ValkeyStore(valkey_server.url)
    try:
        store.append(message(1))
        valkey_server.kill()
        valkey_server.start()
        store.append(message(2))
        assert [m.seq for m in store.unpublished_messages()] == [1, 2]
    finally:
        store.close()
    with valkey_server.client() as client:
        assert client.zrange("{groker}:queued", 0, -1) == ["1", "2"]


def test_a_valkey_that_is_not_there_refuses_at_start():
    with pytest.raises(StoreError, match="cannot load from Valkey"):
        build_broker(
            settings_for_tests(store="valkey", valkey_url=f"redis://127.0.0.1:{free_port()}/0")
        )


def test_seq_carries_on_when_every_message_but_the_newest_is_pruned(valkey_server):
    store = ValkeyStore(valkey_server.url, retention_count=0, retention_seconds=0)
    for n in (1, 2, 3):
        store.append(message(n))
        publish(store)
    store.prune()
    store.close()
    with valkey_server.client() as client:
        assert client.hkeys("{groker}:messages") == ["3"]  # never the newest
        client.hdel("{groker}:messages", "3")  # as if it had gone too: last_seq remains
    again = ValkeyStore(valkey_server.url)
    try:
        assert again.last_seq() == 3 and again.head() is None
    finally:
        again.close()


def test_an_idempotency_key_survives_a_restart(valkey_settings):
    first = build_broker(valkey_settings)
    first.start()
    sent, replayed = first.publish_once("key-1", {"n": 1})
    assert not replayed
    first.stop()
    second = build_broker(valkey_settings)
    second.start()
    try:
        again, replayed = second.publish_once("key-1", {"n": 1})
        assert replayed and again.id == sent.id and again.seq == sent.seq
    finally:
        second.stop()


def test_a_failed_write_is_refused_never_delivered_and_publishing_recovers(
    valkey_server, valkey_settings, make_sink
):
    sink = make_sink()
    broker = build_broker(valkey_settings)
    broker.start()
    try:
        broker.subscribe(sink.url)
        before = broker.publish("before")
        wait_until(lambda: sink.seqs == [before.seq], what="the first delivery")
        valkey_server.kill()
        with pytest.raises(StoreError):
            broker.publish_once("refused", "lost")
        assert broker.store.unpublished() == 0 and broker.store.head() is None
        assert broker.store.by_key("refused") is None  # the key went with it
        valkey_server.start()
        _, replayed = broker.publish_once("refused", "after")
        assert not replayed
        wait_until(lambda: len(sink.received) == 2, what="the delivery after the restart")
        assert [m["body"] for m in sink.received] == ["before", "after"]
    finally:
        broker.stop()


def test_a_fenced_store_writes_nothing(valkey_server):
    with valkey_server.client() as client:
        client.set("{groker}:owner", "another broker")
    store = ValkeyStore(valkey_server.url, owner_token="this broker")
    try:
        refused = message(1, key="k")
        with pytest.raises(StoreError, match="fenced: another broker owns the queue"):
            store.append(refused)
        with pytest.raises(StoreError, match="fenced"):
            store.save_subscription(Subscriber("http://127.0.0.1:9/a"))
        assert store.head() is None and store.by_key("k") is None
        with valkey_server.client() as client:
            assert client.keys("*") == ["{groker}:owner"]
            client.set("{groker}:owner", "this broker")  # ownership handed over
        store.append(message(2))
        assert store.head().seq == 2
    finally:
        store.close()


def test_keys_are_under_the_configured_prefix(valkey_server):
    store = ValkeyStore(valkey_server.url, prefix="blue")
    store.append(message(1))
    store.close()
    with valkey_server.client() as client:
        assert sorted(client.keys("*")) == ["{blue}:last_seq", "{blue}:messages", "{blue}:queued"]


def test_waiting_for_valkey_does_not_block_the_other_greenlets(valkey_server):
    store = ValkeyStore(valkey_server.url)
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    slow = valkey_server.client()
    try:
        # Valkey answers nobody for 0.2 s (from a thread: this client would block the hub).
        sleeping = gevent.get_hub().threadpool.spawn(slow.execute_command, "DEBUG", "SLEEP", 0.2)
        gevent.sleep(0.02)
        began = time.perf_counter()
        store.append(message(1))
        ended = time.perf_counter()
        sleeping.get()
    finally:
        ticker.kill()
        slow.close()
        store.close()
    assert ended - began > 0.1, "the append did not wait for Valkey"
    during = [t for t in ticks if began <= t <= ended]
    assert len(during) >= (ended - began) / 0.01 / 2, f"{len(during)} ticks in {ended - began}s"
