"""Broker replicas sharing one Valkey (a real valkey-server): one owns the queue, the others
wait as standbys and take over when it stops, dies or is paused past its lease; a replica
that lost the lease can no longer change the queue. Real gunicorn+gevent brokers where
processes are killed and paused."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import gevent
import pytest
import valkey

from broker.acceptor import Acceptor
from broker.errors import NotSequenced, StoreError
from broker.guard import CallbackGuard
from broker.inbox import Entry, Inbox
from broker.intake import Announcer, Intake
from broker.replica import Replica
from broker.storage.lease import OwnerLease
from broker.wiring import build_broker
from groker_common.http import HttpPool
from groker_common.testing import free_port, wait_until, worker_pid

from .conftest import settings_for_tests


def owner_and_standby(valkey_server, start_broker, lease_seconds: int) -> tuple[Any, Any]:
    """Two real gunicorn brokers on one Valkey: the first owns the queue when the second
    starts, which waits as a standby."""
    shared = {"GROKER_STORE": "valkey", "GROKER_VALKEY_URL": valkey_server.url,
              "GROKER_LEASE_SECONDS": str(lease_seconds)}  # fmt: skip
    return (
        start_broker(GROKER_REPLICA_NAME="first", **shared),
        start_broker(standby=True, GROKER_REPLICA_NAME="second", **shared),
    )


def waiting_request(
    url: str, method: str, path: str, payload: Any = None
) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=15)
    body = None if payload is None else json.dumps(payload)
    connection.request(method, path, body, {"Content-Type": "application/json"})
    return connection


def answer_to(connection: http.client.HTTPConnection) -> tuple[int, Any] | None:
    """A waiting request's answer, status and JSON body; None if the broker went first."""
    try:
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def test_one_owner_the_others_wait_and_a_release_hands_over_at_once(valkey_server):
    first = OwnerLease(valkey_server.url, "groker", seconds=2)
    second = OwnerLease(valkey_server.url, "groker", seconds=2)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert first.renew() and first.held()
    first.release()
    assert second.try_acquire()
    assert not first.renew()  # what was released is not ours to extend
    second.release()


def test_a_lease_not_renewed_expires_and_another_takes_it(valkey_server):
    owner = OwnerLease(valkey_server.url, "groker", seconds=1)
    standby = OwnerLease(valkey_server.url, "groker", seconds=1)
    assert owner.try_acquire()
    began = time.monotonic()
    standby.acquire()  # waits as a standby: the owner renews no more
    assert 0.5 < time.monotonic() - began < 2.5
    assert not owner.renew()


def test_publishes_put_at_once_share_round_trips_and_keep_their_order(valkey_server):
    inbox = Inbox(valkey_server.url, "puts")
    entries = [
        Entry(ids=[f"id-{i}"], items=[(json.dumps({"n": i}), None)], mode="async",
              callback=None, key=f"k-{i}", batch=False, accepted_at=time.time())
        for i in range(50)
    ]  # fmt: skip
    try:
        putting = [gevent.spawn(inbox.put, entry) for entry in entries]
        gevent.joinall(putting, raise_error=True, timeout=10)
        ids = [putter.value for putter in putting]
        assert 1 <= inbox.put_round_trips < len(entries)
        read = inbox.read("0-0", 0)
        # In the inbox in the order they were put, each under the id its put returned.
        assert [(e.entry_id, e.ids, e.key) for e in read] == [
            (entry_id, entry.ids, entry.key) for entry_id, entry in zip(ids, entries, strict=True)
        ]
    finally:
        inbox.close()


def test_puts_that_cannot_reach_valkey_each_fail_and_later_puts_are_tried_again():
    inbox = Inbox(f"redis://127.0.0.1:{free_port()}/0", "puts")
    entry = Entry(ids=["id"], items=[("1", None)], mode="async", callback=None, key="k",
                  batch=False, accepted_at=time.time())  # fmt: skip
    try:
        for _ in range(2):
            putting = [gevent.spawn(inbox.put, entry) for _ in range(3)]
            gevent.joinall(putting, timeout=10)
            assert all(isinstance(p.exception, valkey.ConnectionError) for p in putting)
    finally:
        inbox.close()


def test_a_standby_takes_over_the_queue_when_the_owner_stops(valkey_server, make_sink):
    settings = settings_for_tests(store="valkey", valkey_url=valkey_server.url, lease_seconds=2)
    lost: list[str] = []
    active: dict[str, object] = {}

    def replica(name: str) -> Replica:
        return Replica(
            lambda token: build_broker(settings, owner_token=token),
            OwnerLease(
                settings.valkey_url, settings.valkey_prefix, settings.lease_seconds, name=name
            ),
            on_active=lambda broker: active.__setitem__(name, broker),
            on_lost=lambda: lost.append(name),
        )

    first, second = replica("first"), replica("second")
    first.start()
    wait_until(lambda: first.ready, what="the first replica to own the queue")
    second.start()
    # Longer than the lease: the owner renews it, so the standby never takes over.
    gevent.sleep(settings.lease_seconds * 1.5)
    assert (first.role, second.role, second.ready) == ("owner", "standby", False)
    # Both say so in the roster (the dashboard's replicas), read by either one.
    roster = [(r["name"], r["role"]) for r in first.roster()]
    assert (
        roster
        == [("first", "owner"), ("second", "standby")]
        == [(r["name"], r["role"]) for r in second.roster()]
    )
    message, _ = first.broker.publish_once("k", {"n": 1})
    first.stop()  # hands the lease over, and leaves the roster
    wait_until(lambda: second.ready, timeout=3, what="the standby to take over")
    try:
        assert [(r["name"], r["role"]) for r in second.roster()] == [("second", "owner")]
        assert second.broker.message(message.id).seq == message.seq
        assert second.broker.publish_once("k", {"n": 1}) == (
            second.broker.message(message.id),
            True,
        )
        sink = make_sink()
        second.broker.subscribe(sink.url)
        assert second.broker.publish({"n": 2}).seq == message.seq + 1
        assert not lost
    finally:
        second.stop()


def test_an_owner_whose_write_failed_hands_the_queue_over_and_stops(
    valkey_server, make_sink, caplog
):
    """A failed write may have been applied: the owner cannot tell what Valkey holds, so it
    stops (on_lost, an exit in the app) after handing the lease over, and the replica that
    takes over starts from Valkey, where the refused message is not."""
    settings = settings_for_tests(store="valkey", valkey_url=valkey_server.url, lease_seconds=2)
    lost: list[str] = []

    def replica(name: str) -> Replica:
        return Replica(
            lambda token: build_broker(settings, owner_token=token),
            OwnerLease(settings.valkey_url, settings.valkey_prefix, settings.lease_seconds),
            on_active=lambda broker: None,
            on_lost=lambda: lost.append(name),
        )

    first, second = replica("first"), replica("second")
    first.start()
    wait_until(lambda: first.ready, what="the first replica to own the queue")
    second.start()
    kept, _ = first.broker.publish_once("kept", {"n": 1})
    valkey_server.kill()
    with pytest.raises(StoreError):
        first.broker.publish_once("refused", {"n": 2})
    valkey_server.start()
    wait_until(lambda: lost == ["first"], what="the owner to stop")
    assert "a store write failed: handing the queue over" in caplog.text
    wait_until(lambda: second.ready, what="the standby to take over")
    try:
        assert second.broker.message(kept.id).seq == kept.seq
        again, replayed = second.broker.publish_once("refused", {"n": 2})
        assert not replayed and again.seq > kept.seq
    finally:
        second.stop()
        first.stop()


def test_a_standby_takes_publishes_through_the_inbox_and_relays_the_rest(
    valkey_server, make_sink, start_broker
):
    """Publishes go to whichever replica is asked, into one seq order; everything else a
    standby asks the owner: subscriptions, message status, stats."""
    http = HttpPool()
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=2)
        assert http.request_json("GET", f"{standby.url}/readyz")[0] == 200
        sink = make_sink()
        status, subscribed = http.request_json(
            "POST", f"{standby.url}/subscriptions", {"callback": sink.url}
        )
        assert status == 201
        for url in (owner.url, standby.url):
            listed = http.request_json("GET", f"{url}/subscriptions")[1]["subscriptions"]
            assert [s["id"] for s in listed] == [subscribed["id"]]
        answers = [
            http.exchange_json("POST", f"{url}/messages", {"body": n})
            for n in range(20)
            for url in [(owner.url, standby.url)[n % 2]]
        ]
        assert [status for status, _, _ in answers] == [202] * 20
        assert [a["seq"] for _, a, _ in answers] == list(range(1, 21))
        replicas = {headers["x-groker-replica"] for _, _, headers in answers}
        assert len(replicas) == 2  # each answered its own
        # Sync through the standby: answered once the owner has published it.
        status, synced = http.request_json(
            "POST", f"{standby.url}/messages", {"body": "sync", "mode": "sync"}
        )
        assert (status, synced["status"], synced["delivered"]) == (200, "published", 1)
        status, batch = http.request_json(
            "POST", f"{standby.url}/messages/batch",
            {"mode": "sync", "messages": [{"body": "b1"}, {"body": "b2"}]},
        )  # fmt: skip
        assert status == 200
        assert [(m["seq"], m["status"]) for m in batch["messages"]] == [
            (22, "published"), (23, "published"),
        ]  # fmt: skip
        # One key, whichever replica is asked: one message.
        keyed = {"Idempotency-Key": "k-1"}
        first = http.exchange_json("POST", f"{owner.url}/messages", {"body": "k"},
                                   extra_headers=keyed)  # fmt: skip
        again = http.exchange_json("POST", f"{standby.url}/messages", {"body": "k"},
                                   extra_headers=keyed)  # fmt: skip
        assert again[1]["id"] == first[1]["id"] and again[1]["seq"] == first[1]["seq"] == 24
        assert again[2]["idempotent-replayed"] == "true"
        reused = http.exchange_json("POST", f"{standby.url}/messages", {"body": "other"},
                                    extra_headers=keyed)  # fmt: skip
        assert (reused[0], reused[1]["error"]) == (422, "idempotency key reused")
        wait_until(lambda: len(sink.received) == 24, what="every message delivered")
        assert [m["seq"] for m in sink.received] == list(range(1, 25))
        status, found = http.request_json("GET", f"{standby.url}/messages/{answers[1][1]['id']}")
        assert (status, found["seq"], found["status"]) == (200, 2, "published")
        stats = http.request_json("GET", f"{standby.url}/stats")[1]
        assert (stats["last_seq"], stats["subscribers"]) == (24, 1)
        assert stats["replica"] != answers[1][2]["x-groker-replica"]  # the owner's figures
        # Relayed once at most: a standby asked by another replica does not relay again.
        relayed = http.exchange_json("GET", f"{standby.url}/stats",
                                     extra_headers={"X-Groker-Relayed": "1"})  # fmt: skip
        assert (relayed[0], relayed[1]["error"]) == (503, "standby")
        status, _ = http.request_json("DELETE", f"{standby.url}/subscriptions/{subscribed['id']}")
        assert status == 204
        assert http.request_json("GET", f"{owner.url}/subscriptions")[1]["subscriptions"] == []
    finally:
        http.close()


def test_a_killed_owner_is_replaced_within_its_lease_and_nothing_accepted_is_lost(
    valkey_server, make_sink, start_broker
):
    """Publishes to the standby while no replica owns the queue wait in the inbox, and are
    answered once the standby has taken over."""
    http = HttpPool(concurrency=16)
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=2)
        sink = make_sink()
        http.request_json("POST", f"{owner.url}/subscriptions", {"callback": sink.url})
        accepted = [http.request_json("POST", f"{owner.url}/messages", {"body": n})[1]
                    for n in range(20)]  # fmt: skip
        wait_until(lambda: len(sink.received) == 20, what="the first 20 delivered")

        owner.process.send_signal(signal.SIGKILL)
        began = time.monotonic()
        during = [
            gevent.spawn(http.request_json, "POST", f"{standby.url}/messages", {"body": n}, 15)
            for n in range(20, 25)
        ]
        gevent.joinall(during, timeout=15, raise_error=True)
        took = time.monotonic() - began
        assert took < 2 + 2  # the lease, and the standby's polling, at most
        after = [g.value for g in during]
        assert [status for status, _ in after] == [202] * 5
        assert sorted(a["seq"] for _, a in after) == list(range(21, 26))
        wait_until(lambda: len({m["id"] for m in sink.received}) == 25, what="all 25 delivered")
        seqs = [m["seq"] for m in sink.received]
        assert sorted(set(seqs)) == [a["seq"] for a in accepted] + list(range(21, 26))
        assert seqs == sorted(seqs)  # in order, a repeat at most where the owner died
        stats = http.request_json("GET", f"{standby.url}/stats")[1]
        assert (stats["store"], stats["subscribers"]) == ("valkey", 1)
    finally:
        http.close()


def test_an_owner_paused_past_its_lease_stops_and_comes_back_as_a_standby(
    valkey_server, make_sink, start_broker
):
    """SIGSTOP the owner's worker longer than its lease: the standby takes over; on SIGCONT
    the old owner finds the lease gone, leaves (its worker exits) and gunicorn's new
    worker waits as a standby. Its store could not have written meanwhile: fenced; and
    what it was asked while paused, it answers as a standby, not from its memory."""
    http = HttpPool()
    try:
        first, second = owner_and_standby(valkey_server, start_broker, lease_seconds=1)
        paused = worker_pid(first.process.pid)
        os.kill(paused, signal.SIGSTOP)
        try:
            wait_until(
                lambda: http.request_json("GET", f"{second.url}/readyz")[0] == 200,
                timeout=10,
                what="the standby to take over",
            )
            status, answer = http.request_json("POST", f"{second.url}/messages", {"body": 1})
            assert (status, answer["seq"]) == (202, 1)
            # Sent for certain before it wakes: the kernel takes the connection and the
            # request in, and the frozen worker reads them first thing when it wakes.
            asked = [
                waiting_request(first.url, method, path, payload)
                for method, path, payload in [
                    ("GET", "/readyz", None),
                    ("GET", "/stats", None),
                    ("POST", "/messages", {"body": "late"}),
                ]
            ]
        finally:
            os.kill(paused, signal.SIGCONT)
        # Answered as a standby on waking (the new owner's figures, the new owner's seq),
        # or cut off by its exit (None): never from its own memory of the queue.
        readyz, stats, late = [answer_to(connection) for connection in asked]
        assert readyz is None or readyz[0] in (200, 503), readyz
        # (Its own memory says 0; the new owner's 1, or 2 if the late publish came first.)
        assert stats is None or (stats[0], stats[1]["last_seq"]) in ((200, 1), (200, 2)), stats
        assert late is None or (late[0], late[1]["seq"]) == (202, 2), late

        def replaced() -> bool:
            try:
                return worker_pid(first.process.pid) != paused
            except RuntimeError:  # between the old worker's exit and the new one's start
                return False

        wait_until(replaced, timeout=10, what="the paused worker to leave")
        wait_until(
            lambda: http.request_json("GET", f"{first.url}/healthz")[0] == 200,
            timeout=10,
            what="its new worker to answer",
        )
        assert http.request_json("GET", f"{first.url}/readyz")[0] == 200  # a standby now
        roster = http.request_json("GET", f"{first.url}/dashboard/snapshot")[1]["replicas"]
        assert sorted(r["role"] for r in roster) == ["owner", "standby"]
        status, answer = http.request_json("POST", f"{first.url}/messages", {"body": 2})
        last = 1 if late is None else 2  # the late publish, if it was answered, was taken
        assert (status, answer["seq"]) == (202, last + 1)
    finally:
        http.close()


def test_a_publish_taken_while_no_replica_owns_the_queue_waits_in_the_inbox(
    valkey_server, make_sink
):
    """No owner within the sync timeout: 504 not sequenced, the message still in the inbox;
    an owner that comes later publishes it, and the publisher's retry with its key learns
    its seq. Valkey unreachable: 503 store unavailable, as the owner answers."""
    settings = settings_for_tests(
        store="valkey", valkey_url=valkey_server.url, lease_seconds=2, sync_timeout=1
    )
    acceptor = Acceptor(
        settings, Inbox(valkey_server.url, "groker"), CallbackGuard(settings.allowed_networks)
    )
    owner = OwnerLease(valkey_server.url, "groker", seconds=2, name="owner")
    inbox = Inbox(valkey_server.url, "groker")
    broker = intake = None
    try:
        began = time.monotonic()
        with pytest.raises(NotSequenced) as refused:
            acceptor.publish_once("k-1", {"n": 1})
        assert 1 <= time.monotonic() - began < 3
        assert owner.try_acquire()
        broker = build_broker(settings, owner_token=owner.token, announce=Announcer(inbox))
        broker.start()
        intake = Intake(broker, inbox, broker.store)
        intake.start()
        sink = make_sink()
        broker.subscribe(sink.url)

        def taken_in() -> bool:
            # Durable, not only sequenced: a retry before its write is done is refused (409).
            message = broker.message(refused.value.ids[0])
            return message is not None and broker.store.durable(message)

        wait_until(taken_in, what="the intake")
        message, replayed = acceptor.publish_once("k-1", {"n": 1})
        assert (message.id, message.seq, replayed) == (refused.value.ids[0], 1, True)
        # Published once a subscriber is there: the held message, then a sync one, waited
        # on through the acceptor.
        synced, _ = acceptor.publish_once(None, {"n": 2}, mode="sync")
        assert acceptor.wait_published(synced) == "published"
        assert [m["seq"] for m in sink.received] == [1, 2]
        valkey_server.stop()
        with pytest.raises(StoreError):
            acceptor.publish_once(None, {"n": 3})
    finally:
        valkey_server.start()
        for part in (intake, broker):
            if part is not None:
                part.stop()
        acceptor.close()
        inbox.close()


def test_a_standby_streams_the_owners_dashboard(valkey_server, start_broker):
    http = HttpPool()
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=2)
        http.request_json("POST", f"{owner.url}/messages", {"body": "held"})
        connection = http_client_for(standby.url)
        connection.request("GET", "/dashboard/events")
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = []
        while len(events) < 2:
            line = response.fp.readline().decode()
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
        connection.close()
        for event in events:  # the owner's figures, and both replicas in the roster
            assert (event["stats"]["replica"], event["stats"]["last_seq"]) == ("first", 1)
            roles = sorted((r["name"], r["role"]) for r in event["replicas"])
            assert roles == [("first", "owner"), ("second", "standby")]
    finally:
        http.close()


def http_client_for(url: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urlsplit(url).netloc, timeout=15)
