"""Publishing once with an Idempotency-Key: the same key with the same request answers what
the first answered and creates nothing; with another request it is refused; keys are scoped
per token, expire, survive a restart of the store (and of a real gunicorn broker), and are
forgotten with a write that failed."""

from __future__ import annotations

import signal

import gevent
import pytest

from broker.errors import KeyInUse
from broker.wiring import build_broker
from groker_common.http import HttpPool
from groker_common.testing import wait_until

from .conftest import settings_for_tests

KEY = {"Idempotency-Key": "order-42"}


def test_the_same_key_and_request_is_answered_with_the_first_message(client):
    first = client.post("/messages", json={"body": {"n": 1}}, headers=KEY)
    again = client.post("/messages", json={"body": {"n": 1}}, headers=KEY)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    stats = client.get("/stats").get_json()
    assert (stats["accepted"], stats["queue_length"], stats["last_seq"]) == (1, 1, 1)
    assert stats["replayed"] == 1
    assert "groker_publishes_replayed_total 1.0" in client.get("/metrics").text
    # Another key, or none, is another message.
    other = client.post("/messages", json={"body": {"n": 1}}, headers={"Idempotency-Key": "b"})
    plain = client.post("/messages", json={"body": {"n": 1}})
    assert [other.get_json()["seq"], plain.get_json()["seq"]] == [2, 3]


@pytest.mark.parametrize(
    "changed",
    [
        {"body": {"n": 2}},
        {"body": {"n": 1}, "mode": "sync"},
        {"body": {"n": 1}, "headers": {"a": "b"}},
        {"body": {"n": 1}, "callback": "http://127.0.0.1:9/notify"},
    ],
    ids=["body", "mode", "headers", "callback"],
)
def test_the_same_key_with_another_request_is_refused_and_creates_nothing(client, changed):
    first = client.post("/messages", json={"body": {"n": 1}}, headers=KEY)
    refused = client.post("/messages", json=changed, headers=KEY)
    assert refused.status_code == 422
    assert refused.get_json()["error"] == "idempotency key reused"
    assert "another request" in refused.get_json()["detail"]
    stats = client.get("/stats").get_json()
    assert (stats["accepted"], stats["queue_length"]) == (1, 1)
    # The key stays bound to its first message.
    again = client.post("/messages", json={"body": {"n": 1}}, headers=KEY)
    assert again.get_json()["id"] == first.get_json()["id"]


def test_keys_are_scoped_per_token(make_app):
    app = make_app(settings_for_tests(publish_tokens=["alice", "bob"]))
    client = app.test_client()

    def publish(token: str):
        auth = {"Authorization": f"Bearer {token}"}
        return client.post("/messages", json={"body": 1}, headers=KEY | auth).get_json()

    alice, bob, alice_again = publish("alice"), publish("bob"), publish("alice")
    assert alice["id"] != bob["id"]
    assert alice_again["id"] == alice["id"]
    assert [alice["seq"], bob["seq"]] == [1, 2]


def test_a_key_expires_after_its_window(make_app):
    app = make_app(settings_for_tests(idempotency_seconds=0.3))
    client = app.test_client()
    first = client.post("/messages", json={"body": 1}, headers=KEY).get_json()
    gevent.sleep(0.4)
    later = client.post("/messages", json={"body": 1}, headers=KEY)
    assert "Idempotent-Replayed" not in later.headers
    assert later.get_json()["seq"] == first["seq"] + 1
    # From now on the key answers with the newer message.
    again = client.post("/messages", json={"body": 1}, headers=KEY)
    assert again.get_json()["id"] == later.get_json()["id"]


def test_a_key_is_answered_only_while_its_message_is_retained(make_app, make_sink):
    app = make_app(settings_for_tests(retention_count=1))
    client = app.test_client()
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    first = client.post("/messages", json={"body": 1}, headers=KEY).get_json()
    client.post("/messages", json={"body": 2})
    wait_until(lambda: sink.seqs == [1, 2], what="both delivered")
    wait_until(lambda: client.get(f"/messages/{first['id']}").status_code == 404, what="pruned")
    later = client.post("/messages", json={"body": 1}, headers=KEY)
    assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
    assert later.get_json()["seq"] == 3


def test_the_key_counts_against_the_queue_bytes(client):
    client.post("/messages", json={"body": "x"})
    plain = client.get("/stats").get_json()["unpublished_bytes"]
    client.post("/messages", json={"body": "x"}, headers=KEY)
    keyed = client.get("/stats").get_json()["unpublished_bytes"] - plain
    # The key (scoped by caller) and the request's fingerprint (a SHA-256 in hex) are kept.
    assert keyed >= plain + len(KEY["Idempotency-Key"]) + 64


def test_a_sync_retry_waits_on_the_same_message(make_app, make_sink):
    app = make_app(settings_for_tests(sync_timeout=0.3))
    client = app.test_client()
    request = {"body": "wait for me", "mode": "sync"}
    timed_out = client.post("/messages", json=request, headers=KEY)
    assert timed_out.status_code == 504  # nobody subscribed: it waits in the queue
    retried = client.post("/messages", json=request, headers=KEY)
    assert retried.status_code == 504
    assert retried.get_json()["id"] == timed_out.get_json()["id"]
    sink = make_sink()
    broker = app.extensions["groker"]

    def subscribe_once_the_retry_waits() -> None:
        wait_until(lambda: sum(broker._waiting.values()) == 1, what="the retry waiting")
        client.post("/subscriptions", json={"callback": sink.url})

    subscribing = gevent.spawn(subscribe_once_the_retry_waits)
    # Retried while it is queued; answered once the subscriber joined and got it.
    published = client.post("/messages", json=request, headers=KEY)
    subscribing.join()
    assert published.status_code == 200, published.get_json()
    assert published.headers["Idempotent-Replayed"] == "true"
    assert published.get_json()["id"] == timed_out.get_json()["id"]
    assert published.get_json()["delivered"] == 1
    assert [m["body"] for m in sink.received] == ["wait for me"]
    # Once published, a retry is answered at once.
    assert client.post("/messages", json=request, headers=KEY).status_code == 200


def test_a_key_whose_first_request_is_still_being_written_answers_409(tmp_path):
    broker = build_broker(settings_for_tests(store="sqlite", db_path=str(tmp_path / "g.db")))
    broker.start()
    try:
        # The first waits for its commit; the second comes meanwhile.
        first = gevent.spawn(broker.publish_once, "k", 1)
        second = gevent.spawn(broker.publish_once, "k", 1)
        gevent.joinall([first, second])
        assert isinstance(second.exception, KeyInUse)
        message, replayed = first.get()
        assert not replayed
        assert broker.publish_once("k", 1) == (message, True)
    finally:
        broker.stop()


def test_keys_survive_a_restart_of_the_store(tmp_path):
    settings = settings_for_tests(store="sqlite", db_path=str(tmp_path / "g.db"))
    before = build_broker(settings)
    before.start()
    queued, _ = before.publish_once("queued", {"n": 1})
    sync, _ = before.publish_once("sync", {"n": 2}, mode="sync")
    before.stop()

    after = build_broker(settings)
    after.start()
    try:
        assert after.publish_once("queued", {"n": 1})[0].id == queued.id
        again, replayed = after.publish_once("sync", {"n": 2}, mode="sync")
        assert (again.id, again.seq, replayed) == (sync.id, sync.seq, True)
        assert after.store.unpublished() == 2
        new, replayed = after.publish_once("new", {"n": 3})
        assert (new.seq, replayed) == (3, False)
    finally:
        after.stop()


def test_a_real_broker_answers_a_key_across_a_kill_and_restart(tmp_path, start_broker):
    """A real gunicorn+gevent broker: the answer to the first request is known, the broker
    is killed (SIGKILL) and started again, and the retry gets the same message."""
    http = HttpPool()
    durable = {"GROKER_STORE": "sqlite", "GROKER_DB_PATH": str(tmp_path / "groker.db")}

    def publish(url: str, body: object, key: str) -> tuple[int, dict, dict]:
        extra = {"Idempotency-Key": key}
        return http.exchange_json("POST", f"{url}/messages", {"body": body}, extra_headers=extra)

    try:
        first = start_broker(**durable)
        status, answer, headers = publish(first.url, {"n": 1}, "kill-me")
        assert status == 202 and "idempotent-replayed" not in headers
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)

        second = start_broker(**durable)
        status, again, headers = publish(second.url, {"n": 1}, "kill-me")
        assert (status, again["id"], again["seq"]) == (202, answer["id"], answer["seq"])
        assert headers["idempotent-replayed"] == "true"
        status, refused, _ = publish(second.url, {"n": 2}, "kill-me")
        assert (status, refused["error"]) == (422, "idempotency key reused")
        stats = http.request_json("GET", f"{second.url}/stats")[1]
        assert (stats["queue_length"], stats["last_seq"]) == (1, 1)
    finally:
        http.close()


def test_every_request_waiting_on_one_keyed_sync_message_is_answered_on_drain(broker):
    message, _ = broker.publish_once("k", "queued", mode="sync")
    retried, replayed = broker.publish_once("k", "queued", mode="sync")
    assert retried is message and replayed
    waiters = [gevent.spawn(broker.wait_published, m) for m in (message, retried)]
    wait_until(lambda: sum(broker._waiting.values()) == 2, what="both waiting")
    waiters[0].kill()  # one waiter gone (its client hung up) ...
    broker.drain()  # ... the other is still answered when the broker stops
    assert waiters[1].get(timeout=2) == "draining"
