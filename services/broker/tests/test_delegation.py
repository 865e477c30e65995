"""The owner's lanes spread over the replicas (delegation.py, lane_host.py): real gunicorn
brokers on a real valkey-server, one killed or paused while it delivers for the owner."""

from __future__ import annotations

import os
import signal
from typing import Any

import gevent
import gevent.event

from groker_common.http import HttpPool
from groker_common.testing import wait_until, worker_pid

from .test_replicas import owner_and_standby

LEASE = 2


def firsts(seqs: list[int]) -> list[int]:
    """Each seq where it first arrived: a crash may repeat what was out, never reorder."""
    seen: set[int] = set()
    return [seq for seq in seqs if not (seq in seen or seen.add(seq))]


def subscribe(http: HttpPool, url: str, sinks: list[Any]) -> dict[str, Any]:
    """Each sink subscribed through `url`; the sinks by subscriber id."""
    by_id = {}
    for sink in sinks:
        status, subscribed = http.request_json(
            "POST", f"{url}/subscriptions", {"callback": sink.url}
        )
        assert status == 201
        by_id[subscribed["id"]] = sink
    return by_id


def holders(http: HttpPool, url: str) -> dict[str, str]:
    """Which replica delivers to each subscriber, as the dashboard shows it."""
    snapshot = http.request_json("GET", f"{url}/dashboard/snapshot")[1]
    return {s["id"]: s["replica"] for s in snapshot["subscribers"]}


def publish(http: HttpPool, url: str, n: int) -> int:
    status, answer = http.request_json("POST", f"{url}/messages", {"body": n})
    assert status == 202, answer
    return answer["seq"]


def test_the_owner_spreads_its_lanes_and_every_subscriber_gets_every_message_in_order(
    valkey_server, make_sink, start_broker
):
    http = HttpPool()
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=LEASE)
        sinks = subscribe(http, standby.url, [make_sink() for _ in range(4)])
        held = holders(http, owner.url)
        # The fewest first, the owner counting one lane more (it also sequences).
        assert sorted(held.values()) == ["first", "second", "second", "second"]
        assert holders(http, standby.url) == held  # relayed: the owner's
        seqs = [publish(http, (owner.url, standby.url)[n % 2], n) for n in range(30)]
        assert seqs == list(range(1, 31))
        # A sync publish is published once every replica's lanes have delivered it.
        status, synced = http.request_json(
            "POST", f"{owner.url}/messages", {"body": "sync", "mode": "sync"}
        )
        assert (status, synced["status"], synced["delivered"]) == (200, "published", 4)
        for sink in sinks.values():
            assert sink.seqs == list(range(1, 32))  # every one, once, in order
        payloads = {sink.raw[0] for sink in sinks.values()}
        assert len(payloads) == 1  # the same delivery, whichever replica made it
        stats = http.request_json("GET", f"{owner.url}/stats")[1]
        assert (stats["delivered"], stats["published"]) == (4 * 31, 31)
        # Unsubscribed from a lane on the other replica: nothing more reaches it.
        away = next(sid for sid, name in held.items() if name == "second")
        assert http.request_json("DELETE", f"{standby.url}/subscriptions/{away}")[0] == 204
        publish(http, owner.url, 99)
        for sid, sink in sinks.items():
            wait_until(lambda s=sink, sid=sid: len(s.seqs) == (31 if sid == away else 32))
        gevent.sleep(0.3)
        assert len(sinks[away].seqs) == 31
    finally:
        http.close()


def test_a_replica_that_joins_takes_its_share_of_the_lanes_and_nothing_is_reordered(
    valkey_server, make_sink, start_broker
):
    """Four subscribers, all the lone owner's, each with a delivery hanging and more waiting
    behind it when a second replica starts: lanes move to it, one at a time, until neither
    holds two more than the other (the owner counting one more: 2 and 2); a lane moves only
    once it has delivered what it held, so every subscriber gets every message once, in
    order, whichever replica sends it."""
    http = HttpPool(concurrency=8)
    # Attempts that outlast the hanging: a timed-out attempt's retry would be a repeat.
    shared = {"GROKER_STORE": "valkey", "GROKER_VALKEY_URL": valkey_server.url,
              "GROKER_LEASE_SECONDS": str(LEASE), "GROKER_DELIVERY_TIMEOUT": "60"}  # fmt: skip
    try:
        owner = start_broker(GROKER_REPLICA_NAME="first", **shared)
        hang = gevent.event.Event()
        hang.set()
        sinks = subscribe(http, owner.url, [make_sink(hold=hang) for _ in range(4)])
        accepted = [publish(http, owner.url, n) for n in range(5)]
        hang.clear()  # from here on each lane's first delivery hangs, the rest wait behind
        accepted += [publish(http, owner.url, n) for n in range(5, 15)]
        start_broker(standby=True, GROKER_REPLICA_NAME="second", **shared)
        gevent.sleep(LEASE)  # a lane on its way: it waits for the old one to be done
        accepted += [publish(http, owner.url, n) for n in range(15, 25)]
        assert set(holders(http, owner.url).values()) == {"first"}
        hang.set()
        wait_until(
            lambda: sorted(holders(http, owner.url).values()) == ["first"] * 2 + ["second"] * 2,
            timeout=LEASE * 6,
            what="two lanes to move to the second replica",
        )
        accepted += [publish(http, owner.url, n) for n in range(25, 45)]
        for sink in sinks.values():
            wait_until(lambda s=sink: set(s.seqs) >= set(accepted), what="every message")
            assert sink.seqs == accepted  # each once, in order, whichever replica sent it
        # A sink has a message before the broker has its answer (and, from the second
        # replica, before the outcome is back through Valkey): the counts follow.
        wait_until(
            lambda: (
                http.request_json("GET", f"{owner.url}/stats")[1]["delivered"] == 4 * len(accepted)
            ),
            what="every delivery counted",
        )
        lanes = http.request_json("GET", f"{owner.url}/dashboard/snapshot")[1]["subscribers"]
        assert sum(lane["delivered"] for lane in lanes) == 4 * len(accepted)  # counts moved too
    finally:
        http.close()


def test_the_lanes_of_a_killed_replica_move_and_every_message_still_arrives_in_order(
    valkey_server, make_sink, start_broker
):
    http = HttpPool(concurrency=8)
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=LEASE)
        sinks = subscribe(http, owner.url, [make_sink() for _ in range(4)])
        accepted: list[int] = []
        stop = gevent.event.Event()

        def load() -> None:
            n = 0
            while not stop.is_set():
                accepted.append(publish(http, owner.url, n))
                n += 1
                gevent.sleep(0.02)

        publishing = gevent.spawn(load)
        gevent.sleep(1)
        standby.process.send_signal(signal.SIGKILL)
        killed_at = len(accepted)
        gevent.sleep(LEASE * 2)
        stop.set()
        publishing.get()
        assert len(accepted) > killed_at + 50  # publishing went on meanwhile
        assert set(holders(http, owner.url).values()) == {"first"}
        for sink in sinks.values():
            wait_until(lambda s=sink: set(s.seqs) >= set(accepted), what="every message")
            # In order, every one; a repeat at most of what was out when the replica died.
            assert firsts(sink.seqs) == accepted, sink.seqs
    finally:
        http.close()


def test_a_replica_paused_past_its_lease_delivers_nothing_more_for_the_lanes_it_lost(
    valkey_server, make_sink, start_broker
):
    """Its lanes hold messages when it is paused (their subscribers hang); the owner moves
    them and delivers those and newer ones; woken, it must not deliver the old ones again
    after the newer ones."""
    http = HttpPool()
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=LEASE)
        hang = gevent.event.Event()
        sinks = subscribe(http, owner.url, [make_sink(hold=hang) for _ in range(2)])
        away = [sinks[sid] for sid, name in holders(http, owner.url).items() if name == "second"]
        assert len(away) == 2  # both: the owner counts one lane more
        hang.clear()
        before = [publish(http, owner.url, n) for n in range(10)]
        wait_until(lambda: away[0].hits == 1, what="the first delivery under way")
        paused = worker_pid(standby.process.pid)
        os.kill(paused, signal.SIGSTOP)
        try:
            hang.set()
            wait_until(
                lambda: set(holders(http, owner.url).values()) == {"first"},
                timeout=LEASE * 3,
                what="its lanes to move",
            )
            after = [publish(http, owner.url, n) for n in range(10, 20)]
            wait_until(lambda: set(away[0].seqs) >= set(before + after), what="all delivered")
        finally:
            os.kill(paused, signal.SIGCONT)
        seen = len(away[0].seqs)
        gevent.sleep(LEASE + 0.5)  # woken, what would it deliver?
        late = away[0].seqs[seen:]
        assert late == [], f"delivered after waking, behind newer ones: {late}"
        assert firsts(away[0].seqs) == before + after
    finally:
        http.close()


def test_after_valkey_was_down_longer_than_a_lease_every_accepted_message_is_published(
    valkey_server, make_sink, start_broker
):
    """Both replicas go silent (they cannot say so in Valkey), the owner gives the queue
    up; once Valkey is back, whoever owns the queue delivers what was not yet published,
    through lanes here or on the other replica, and nothing waits for good."""
    http = HttpPool()
    try:
        owner, standby = owner_and_standby(valkey_server, start_broker, lease_seconds=LEASE)
        sinks = subscribe(http, owner.url, [make_sink() for _ in range(4)])
        assert sorted(holders(http, owner.url).values()) == ["first"] + ["second"] * 3
        before = [publish(http, owner.url, n) for n in range(10)]
        valkey_server.stop()
        gevent.sleep(LEASE * 2)
        valkey_server.start()

        def answered() -> bool:
            try:
                return http.request_json("POST", f"{standby.url}/messages", {"body": 10})[0] == 202
            except OSError:
                return False

        wait_until(answered, timeout=20, what="publishing again")
        after = [publish(http, standby.url, n) for n in range(11, 20)]
        stats: dict[str, Any] = {}

        def all_published() -> bool:
            stats.update(http.request_json("GET", f"{owner.url}/stats")[1])
            return stats["unpublished"] == 0

        wait_until(all_published, timeout=20, what=f"everything published: {stats}")
        for sink in sinks.values():
            # The owner gave up while Valkey was down: what it had not recorded as published
            # is delivered again, after what it had.
            assert firsts(sink.seqs)[: len(before)] == before
            assert set(sink.seqs) >= set(after)
            assert firsts(sink.seqs) == sorted(firsts(sink.seqs)), sink.seqs
    finally:
        http.close()
