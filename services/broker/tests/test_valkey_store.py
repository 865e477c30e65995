"""The Valkey store, against a real valkey-server: what it acknowledged survives the store
and Valkey itself being killed, seq never repeats even once all is pruned, a write
that fails (Valkey down, or fenced off) is refused and never handed out, and its waiting
never stalls the other greenlets."""

from __future__ import annotations

import time
import uuid

import gevent
import pytest
import valkey

from broker.errors import StoreError
from broker.model import Message, Subscriber
from broker.settings import BrokerSettings
from broker.storage.valkey import ValkeyStore
from broker.storage.valkey_client import ValkeyTarget
from broker.wiring import build_broker
from groker_common.testing import free_port, poll, wait_until

from .conftest import settings_for_tests
from .valkey_server import SentinelProcess, ValkeyProcess


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


def test_a_failed_write_is_refused_never_delivered_and_the_broker_starts_over(
    valkey_server, valkey_settings, make_sink
):
    """Refused, and then nothing more is written (the store cannot tell what Valkey holds)
    until a broker starts over from Valkey, where the publisher's retry is a new message."""
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
        assert not broker.store.sound
        valkey_server.start()
        with pytest.raises(StoreError, match="starting over"):
            broker.publish_once("refused", "after")
    finally:
        broker.stop()
    again = build_broker(valkey_settings)
    again.start()
    try:
        _, replayed = again.publish_once("refused", "after")
        assert not replayed  # Valkey was down: the first attempt never reached it
        wait_until(lambda: len(sink.received) == 2, what="the delivery after the restart")
        assert [m["body"] for m in sink.received] == ["before", "after"]
    finally:
        again.stop()


def test_a_write_its_replicas_did_not_confirm_is_found_by_the_retry_after_the_restart(
    valkey_server,
):
    """WAITAOF answering too few replicas: refused (503), yet written on the primary, so
    the store writes nothing more, and the retry with the key replays that message rather
    than making a second one (nor one behind later messages)."""
    store = ValkeyStore(valkey_server.url, wait_replicas=1, wait_ms=100)
    try:
        with pytest.raises(StoreError, match="append-only file of 0 replicas, not 1"):
            store.append(message(1, key="k"))
        assert store.by_key("k") is None and not store.sound
        with pytest.raises(StoreError, match="starting over"):
            store.append(message(2))
    finally:
        store.close()
    again = ValkeyStore(valkey_server.url)
    try:
        kept = again.by_key("k")
        assert kept is not None and kept.seq == 1
        assert [m.seq for m in again.unpublished_messages()] == [1]
    finally:
        again.close()


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
            client.set("{groker}:owner", "this broker")  # ownership back: too late
        with pytest.raises(StoreError, match="starting over"):
            store.append(message(2))
        assert not store.sound
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


def test_through_sentinel_every_acknowledged_write_survives_the_primary_killed(tmp_path):
    """A primary, its replica and a Sentinel, all real: writes answered only once in both
    append-only files (WAITAOF 1 1). The primary is killed; the Sentinel promotes the
    replica; a broker starting over through the Sentinel finds every acknowledged message
    there, and, once the old primary is back as a replica, writes again."""
    primary = ValkeyProcess(tmp_path / "primary")
    replica = ValkeyProcess(tmp_path / "replica", replica_of=primary)
    sentinel = SentinelProcess(tmp_path / "sentinel", primary)
    processes = [primary, replica, sentinel]
    for process in processes:
        process.directory.mkdir()
        process.start()
    replicated = settings_for_tests(
        store="valkey",
        valkey_url="redis://unused:6379/0",  # the Sentinel names the server
        valkey_sentinels=[sentinel.address],
        valkey_wait_replicas=1,
        drain_timeout=1,
    )
    try:
        poll(lambda: _follows(replica, primary), timeout=30, what="the replica to sync")
        poll(lambda: _sentinel_knows(sentinel, replica), timeout=30, what="the Sentinel")
        first = build_broker(replicated)
        first.start()
        sent = [first.publish_once(f"k{n}", {"n": n})[0] for n in range(20)]
        primary.kill()
        poll(lambda: _settled_on(sentinel, replica), timeout=30, what="the failover to end")
        with pytest.raises(StoreError):
            first.publish_once("k20", {"n": 20})
        assert not first.store.sound
        first.stop()

        primary.replica_of = replica  # back, as a replica of the new primary
        primary.start()
        poll(lambda: _follows(primary, replica), timeout=30, what="the old primary to sync")
        poll(
            lambda: _settled_on(sentinel, replica) and _writable(replicated, replica),
            timeout=30,
            what="the Sentinel to name a writable primary",
        )
        second = build_broker(replicated)
        second.start()
        try:
            for n, message in enumerate(sent):
                again, replayed = second.publish_once(f"k{n}", {"n": n})
                assert replayed and (again.id, again.seq) == (message.id, message.seq)
            assert second.publish_once("k20", {"n": 20})[0].seq > sent[-1].seq
        finally:
            second.stop()
    finally:
        for process in reversed(processes):
            process.stop()


def _follows(replica: ValkeyProcess, primary: ValkeyProcess) -> bool:
    """Whether `replica` has loaded `primary`'s data and has acknowledged all its stream,
    so that WAITAOF can count it. The primary calls a replica "online" as soon as it has
    sent the snapshot, a second or more before the replica has loaded it (its link still
    down): a write then waits in WAITAOF for that load."""
    with replica.client() as client:
        mine = client.info("replication")
    with primary.client() as client:
        theirs = client.info("replication")
    if mine["role"] != "slave" or mine.get("master_port") != primary.port:
        return False
    if mine.get("master_link_status") != "up" or mine.get("master_sync_in_progress") != 0:
        return False
    return any(
        value["port"] == replica.port
        and value["state"] == "online"
        and value["offset"] == theirs["master_repl_offset"]
        for name, value in theirs.items()
        if name.startswith("slave") and isinstance(value, dict)
    )


def _sentinel(sentinel: SentinelProcess) -> valkey.Valkey:
    return valkey.Valkey(port=sentinel.port, decode_responses=True, socket_timeout=2)


def _sentinel_knows(sentinel: SentinelProcess, replica: ValkeyProcess) -> bool:
    """Whether the Sentinel has found `replica` (in the primary's INFO, which it reads every
    10 s) and reaches it: else a primary killed now leaves it nothing to promote."""
    with _sentinel(sentinel) as client:
        replicas = client.sentinel_slaves(SentinelProcess.SERVICE)
    return any(r["port"] == replica.port and r["flags"] == "slave" for r in replicas)


def _settled_on(sentinel: SentinelProcess, server: ValkeyProcess) -> bool:
    """Whether the Sentinel is done failing over to `server` and has heard from it since.
    It names the promoted replica (GET-MASTER-ADDR-BY-NAME) before its failover ends; and at
    the end it drops its link and may wait up to 1 s (its ping period) to reconnect, while
    down-after-milliseconds is 500: it may call the new primary down for a moment, a broker
    then finding "No master found", and an old primary back by then being promoted in its
    place. last-ping-sent, set at that reset, goes back to 0 only once a ping is answered."""
    with _sentinel(sentinel) as client:
        state = client.sentinel_master(SentinelProcess.SERVICE)
    return (
        state["port"] == server.port
        and state["flags"] == "master"  # no s_down, o_down, failover, disconnected
        and state["role-reported"] == "master"
        and state["last-ping-sent"] == 0
    )


def _writable(settings: BrokerSettings, server: ValkeyProcess) -> bool:
    """Whether the Sentinels name `server`, as a broker would reach it, and it takes a write
    as a primary."""
    client = ValkeyTarget.from_settings(settings).client(2, 2)
    try:
        if client.info("server")["tcp_port"] != server.port:
            return False
        if client.execute_command("ROLE")[0] != "master":
            return False
        return bool(client.set("probe", "written"))  # outside the broker's {groker} keys
    except valkey.ValkeyError:
        return False
    finally:
        client.close()
