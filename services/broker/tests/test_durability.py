"""The SQLite store: accepted messages and subscriptions survive the broker, writes are
grouped, old messages are pruned, and a stopping broker keeps what it has not published."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import gevent
import pytest

from broker.core import Broker, Draining
from broker.settings import BrokerSettings
from groker_common.http import HttpPool
from groker_common.testing import wait_until

from .conftest import settings_for_tests

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def durable(tmp_path) -> BrokerSettings:
    return settings_for_tests(store="sqlite", db_path=str(tmp_path / "groker.db"), drain_timeout=1)


def rows(settings: BrokerSettings, sql: str) -> list[tuple]:
    with sqlite3.connect(settings.db_path) as conn:
        return conn.execute(sql).fetchall()


def test_accepted_messages_and_subscriptions_survive_a_restart(durable, make_sink):
    sink = make_sink()
    first = Broker(durable)
    first.start()
    subscriber, _ = first.subscribe(sink.url)
    first.unsubscribe(subscriber.id)
    kept, _ = first.subscribe(sink.url)
    first.registry.lanes()[0].close()  # stop delivering, without unsubscribing
    messages = [first.publish({"n": n}) for n in range(5)]
    first.stop()

    second = Broker(durable)
    second.start()
    try:
        assert [lane.subscriber.id for lane in second.registry.lanes()] == [kept.id]
        wait_until(lambda: len(sink.received) == 5, what="the recovered messages")
        assert sink.seqs == [m.seq for m in messages]
        assert second.publish("next").seq == 6  # seq carries on
    finally:
        second.stop()


def test_concurrent_publishes_share_commits(durable):
    broker = Broker(durable)
    broker.start()
    try:
        publishers = [gevent.spawn(broker.publish, n) for n in range(300)]
        gevent.joinall(publishers, raise_error=True)
        batches = broker.store.batches
        assert rows(durable, "SELECT COUNT(*) FROM messages") == [(300,)]
        assert batches < 100, f"{batches} commits for 300 concurrent publishes"
        seqs = [seq for (seq,) in rows(durable, "SELECT seq FROM messages ORDER BY seq")]
        assert seqs == list(range(1, 301))
    finally:
        broker.stop()


def test_published_messages_are_pruned_but_seq_never_repeats(tmp_path, make_sink):
    settings = settings_for_tests(store="sqlite", db_path=str(tmp_path / "g.db"), retention_count=3)
    broker = Broker(settings)
    broker.start()
    sink = make_sink()
    broker.subscribe(sink.url)
    messages = [broker.publish(n) for n in range(10)]
    wait_until(lambda: broker.stats()["published"] == 10, what="publication")
    broker.store.prune()
    broker.stop()
    remaining = [seq for (seq,) in rows(settings, "SELECT seq FROM messages ORDER BY seq")]
    assert remaining == [8, 9, 10]  # the newest retention_count
    again = Broker(settings)
    again.start()
    try:
        assert again.message(messages[0].id) is None
        assert again.message(messages[-1].id).status == "published"
        assert again.publish("next").seq == 11
    finally:
        again.stop()


def test_draining_answers_sync_waiters_and_keeps_their_messages(durable, make_sink):
    broker = Broker(durable)
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
    after = Broker(durable)
    after.start()
    try:
        after.subscribe(sink.url)
        wait_until(lambda: sink.seqs == [message.seq], what="delivery after the restart")
    finally:
        after.stop()


def test_a_broker_killed_with_sigkill_loses_nothing_it_accepted(tmp_path, make_sink):
    """A real gunicorn+gevent broker, killed mid-stream and started again."""
    http = HttpPool()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'libs'}:{ROOT / 'services/broker'}",
        "GROKER_DB_PATH": str(tmp_path / "groker.db"),
        "GROKER_LOG_LEVEL": "WARNING",
        "GROKER_ALLOWED_NETWORKS": "127.0.0.0/8",
    }

    def start_broker() -> tuple[subprocess.Popen, str]:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "broker.app:create_app()"],
            cwd=ROOT / "services/broker",
            env={**env, "PORT": str(port)},
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return http.request_json("GET", f"{url}/readyz", timeout=1)[0] == 200
            except Exception:
                return False

        wait_until(ready, timeout=30, what="the broker to start")
        return process, url

    process, url = start_broker()
    try:
        accepted = []
        for n in range(50):
            status, answer = http.request_json("POST", f"{url}/messages", {"body": n})
            assert status == 202
            accepted.append(answer)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

        process, url = start_broker()
        assert http.request_json("GET", f"{url}/stats")[1]["queue_length"] == 50
        sink = make_sink()
        http.request_json("POST", f"{url}/subscriptions", {"callback": sink.url})
        wait_until(lambda: len(sink.received) == 50, timeout=10, what="every accepted message")
        assert sink.seqs == [a["seq"] for a in accepted]
        status, answer = http.request_json("POST", f"{url}/messages", {"body": "after"})
        assert answer["seq"] == 51
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        http.close()
