"""The durable stores: accepted messages and subscriptions survive the broker (SQLite and
Valkey both), writes are grouped, old messages are pruned, and a stopping broker keeps what
it has not published, on each durable store. Valkey's own tests: test_valkey_store.py."""

from __future__ import annotations

import resource
import signal
import sqlite3
from pathlib import Path

import gevent
import pytest
import valkey

from broker.errors import Draining
from broker.settings import BrokerSettings
from broker.wiring import build_broker
from groker_common.http import HttpPool
from groker_common.testing import wait_until, worker_pid

from .conftest import settings_for_tests, store_environment

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def durable(tmp_path) -> BrokerSettings:
    return settings_for_tests(store="sqlite", db_path=str(tmp_path / "groker.db"), drain_timeout=1)


def rows(settings: BrokerSettings, sql: str) -> list[tuple]:
    with sqlite3.connect(settings.db_path) as conn:
        return conn.execute(sql).fetchall()


def stored_seqs(settings: BrokerSettings) -> list[int]:
    """The seqs of the messages the durable store keeps, read from the engine itself."""
    if settings.store == "sqlite":
        return [seq for (seq,) in rows(settings, "SELECT seq FROM messages ORDER BY seq")]
    prefix = f"{{{settings.valkey_prefix}}}"
    with valkey.Valkey.from_url(settings.valkey_url, decode_responses=True) as client:
        kept = sorted(map(int, client.hkeys(f"{prefix}:messages")))
        # Every kept message is either queued or published, once.
        queued = client.zrange(f"{prefix}:queued", 0, -1)
        published = client.zrange(f"{prefix}:published", 0, -1)
        assert sorted(map(int, queued + published)) == kept
        assert sorted(map(int, client.hkeys(f"{prefix}:outcomes"))) == sorted(map(int, published))
        return kept


def test_accepted_messages_and_subscriptions_survive_a_restart(durable_store, make_sink):
    sink = make_sink()
    first = build_broker(durable_store)
    first.start()
    subscriber, _ = first.subscribe(sink.url)
    first.unsubscribe(subscriber.id)
    kept, _ = first.subscribe(sink.url)
    first.registry.lanes()[0].close()  # stop delivering, without unsubscribing
    messages = [first.publish({"n": n}) for n in range(5)]
    first.stop()

    second = build_broker(durable_store)
    second.start()
    try:
        assert [lane.subscriber.id for lane in second.registry.lanes()] == [kept.id]
        wait_until(lambda: len(sink.received) == 5, what="the recovered messages")
        assert sink.seqs == [m.seq for m in messages]
        assert second.publish("next").seq == 6  # seq carries on
    finally:
        second.stop()


def test_concurrent_publishes_share_commits(durable_store):
    broker = build_broker(durable_store)
    broker.start()
    try:
        publishers = [gevent.spawn(broker.publish, n) for n in range(300)]
        gevent.joinall(publishers, raise_error=True)
        batches = broker.store.batches
        assert batches < 100, f"{batches} commits for 300 concurrent publishes"
        assert stored_seqs(durable_store) == list(range(1, 301))
    finally:
        broker.stop()


def test_published_messages_are_pruned_but_seq_never_repeats(durable_store, make_sink):
    settings = durable_store.model_copy(update={"retention_count": 3})
    broker = build_broker(settings)
    broker.start()
    sink = make_sink()
    broker.subscribe(sink.url)
    messages = [broker.publish(n) for n in range(10)]
    wait_until(lambda: broker.stats().as_dict()["published"] == 10, what="publication")
    broker.store.prune()
    broker.stop()
    assert stored_seqs(settings) == [8, 9, 10]  # the newest retention_count
    again = build_broker(settings)
    again.start()
    try:
        assert again.message(messages[0].id) is None
        assert again.message(messages[-1].id).status == "published"
        assert again.publish("next").seq == 11
    finally:
        again.stop()


def test_draining_answers_sync_waiters_and_keeps_their_messages(durable, make_sink):
    broker = build_broker(durable)
    broker.start()
    message = broker.publish("wait for me", mode="sync")
    waiter = gevent.spawn(broker.wait_published, message)
    gevent.sleep(0.05)
    broker.drain()
    assert waiter.get(timeout=2) == "draining"
    with pytest.raises(Draining):
        broker.publish("refused")
    broker.stop()
    assert rows(durable, "SELECT status FROM messages") == [("queued",)]

    sink = make_sink()
    after = build_broker(durable)
    after.start()
    try:
        after.subscribe(sink.url)
        wait_until(lambda: sink.seqs == [message.seq], what="delivery after the restart")
    finally:
        after.stop()


def test_a_broker_killed_with_sigkill_loses_nothing_it_accepted(
    durable_store, make_sink, start_broker
):
    """A real gunicorn+gevent broker (monkey-patched, as deployed), killed mid-stream and
    started again."""
    http = HttpPool()
    durable = store_environment(durable_store)
    try:
        first = start_broker(**durable)
        accepted = []
        for n in range(50):
            status, answer = http.request_json("POST", f"{first.url}/messages", {"body": n})
            assert status == 202
            accepted.append(answer)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)

        second = start_broker(**durable)
        assert http.request_json("GET", f"{second.url}/stats")[1]["queue_length"] == 50
        sink = make_sink()
        http.request_json("POST", f"{second.url}/subscriptions", {"callback": sink.url})
        wait_until(lambda: len(sink.received) == 50, timeout=10, what="every accepted message")
        assert sink.seqs == [a["seq"] for a in accepted]
        status, answer = http.request_json("POST", f"{second.url}/messages", {"body": "after"})
        assert answer["seq"] == 51
    finally:
        http.close()


def test_an_unknown_store_is_refused_at_start_with_the_known_ones_named():
    with pytest.raises(ValueError, match="'nosuch': not one of sqlite, memory, valkey"):
        build_broker(settings_for_tests(store="nosuch"))


def test_a_full_disk_refuses_with_503_delivers_nothing_refused_and_recovers(
    tmp_path, make_sink, start_broker
):
    """A real gunicorn broker whose files may grow no further (RLIMIT_FSIZE, set on the
    running worker: its writes then fail with EFBIG, as on a full disk). What it refuses is
    never delivered, everything it accepted is, in order, and publishing resumes once there
    is room again."""
    http = HttpPool()
    durable = {"GROKER_STORE": "sqlite", "GROKER_DB_PATH": str(tmp_path / "groker.db")}
    try:
        broker = start_broker(**durable)
        sink = make_sink()
        http.request_json("POST", f"{broker.url}/subscriptions", {"callback": sink.url})
        worker = worker_pid(broker.process.pid)
        _, hard = resource.prlimit(worker, resource.RLIMIT_FSIZE)
        resource.prlimit(worker, resource.RLIMIT_FSIZE, (512 * 1024, hard))
        accepted, refused = [], []

        def publish(n: int, body: object) -> tuple[int, dict, dict]:
            key = {"Idempotency-Key": f"n-{n}"}
            url = f"{broker.url}/messages"
            return http.exchange_json("POST", url, {"body": body}, extra_headers=key)

        for n in range(200):
            status, answer, _ = publish(n, {"n": n, "pad": "x" * 20_000})
            assert status in (202, 503), answer
            if status == 202:
                accepted.append((n, answer["seq"]))
            else:
                assert answer["error"] == "store unavailable"
                refused.append(n)
            if len(refused) == 5:
                break
        assert accepted and len(refused) == 5  # the disk filled up, then every write failed
        resource.prlimit(worker, resource.RLIMIT_FSIZE, (hard, hard))
        # A refused publish left nothing behind, not even its key: the retry is a new
        # message, not a replay of one that never was.
        for n in refused:
            status, answer, headers = publish(n, {"n": n, "pad": "x" * 20_000})
            assert status == 202 and "idempotent-replayed" not in headers, answer
            accepted.append((n, answer["seq"]))
        # Deliveries come in seq order: once the last accepted one is in, anything refused
        # before it that was (wrongly) delivered is in too, and would show twice.
        last = accepted[-1][1]
        wait_until(lambda: last in sink.seqs, timeout=20, what="the last accepted delivery")
        assert [m["body"]["n"] for m in sink.received] == [n for n, _ in accepted]
        assert sink.seqs == [seq for _, seq in accepted]
    finally:
        http.close()
