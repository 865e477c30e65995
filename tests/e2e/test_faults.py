"""Nothing accepted is lost: the broker killed and restarted under load, subscribers that
hang or fail, and hostile input, all against the real compose deployment."""

from __future__ import annotations

from collections import defaultdict

import pytest

from bad_requests import BAD_INPUTS, BAD_KEYS, FIRST_KEYED
from groker_common.testing import poll

from .conftest import SYNC_TIMEOUT, System
from .test_system import marker, seqs_between


@pytest.fixture
def under_load(three_clients: System):
    """50 messages a second, mostly async, for the length of a test."""
    three_clients.set_rate(50, sync_ratio=0.1)
    yield three_clients
    three_clients.set_rate(5, sync_ratio=0.5)


def assert_all_accepted_were_published(system: System, accepted: list[str]) -> None:
    """Every id the broker answered 202 (or sync 200/504/503) for is published: the load
    generator got its confirmation, and the broker says so at GET /messages/<id>."""
    poll(
        lambda: not (set(accepted) & system.server_ids()[1]),
        timeout=60,
        what="confirmations for every accepted message",
    )
    statuses = {system.message(mid).get("status") for mid in accepted}
    assert statuses == {"published"}


def assert_each_client_got_every_seq_in_order_since(system: System, first: int) -> None:
    """Each client's received seqs from `first` on (duplicates already dropped by the
    client) are strictly increasing and without a gap."""
    for sub in system.subscriptions():
        seqs = [m["seq"] for m in system.received(sub["callback"]) if m["seq"] >= first]
        assert seqs == sorted(set(seqs)), "out of order or repeated after dropping duplicates"
        assert seqs == list(range(first, first + len(seqs))), "a gap"
        assert len(seqs) >= 100


def numbered_ids(system: System, callback: str, after: int) -> dict[int, set[str]]:
    """What one client received from the load generator: message number (its own count,
    in the body) -> the ids it came with, for the numbers above `after`."""
    got: dict[int, set[str]] = defaultdict(set)
    for message in system.received(callback):
        body = message["body"]
        if isinstance(body, dict) and "n" in body and "source" in body and body["n"] > after:
            got[body["n"]].add(message["id"])
    return got


def assert_every_number_published_once(
    system: System, callbacks: list[str], first_n: int, meant: set[int]
) -> dict[int, str]:
    """Every client got every number meant, each as one message (one id), the same one at
    every client, and the broker says each is published; returns number -> id."""
    at_clients = [numbered_ids(system, callback, first_n) for callback in callbacks]
    for got in at_clients:
        assert set(got) == meant, f"missing {sorted(meant - set(got))[:10]}"
        repeated = {n: ids for n, ids in got.items() if len(ids) > 1}
        assert not repeated, f"published more than once: {list(repeated.items())[:5]}"
    ids = {n: min(at_clients[0][n]) for n in meant}
    assert all({n: min(got[n]) for n in meant} == ids for got in at_clients)  # one message each
    assert {system.message(mid)["status"] for mid in ids.values()} == {"published"}
    return ids


def test_broker_killed_three_times_under_load_publishes_each_message_exactly_once(
    under_load: System,
):
    """The load generator publishes with an Idempotency-Key per message and retries through
    the crashes: every message it meant to send reaches every client exactly once (one id
    per number, none missing), and the broker agrees at GET /messages/<id>."""
    system = under_load
    first_n = system.server_stats()["sent"]  # numbers from here on begin during this test
    start = marker(system)
    for _ in range(3):
        floor = system.stats()["accepted"]
        poll(lambda floor=floor: system.stats()["accepted"] >= floor + 100, what="load")
        system.compose("kill", "-s", "KILL", "broker")
        system.compose("up", "-d", "--wait", "broker")
        system.wait_ready()
    poll(lambda: system.stats()["published"] >= 100, what="publishing after the last restart")
    system.set_rate(0)  # what it meant to send is now fixed; its retries settle
    poll(
        lambda: system.server_stats()["in_flight"] == 0 and system.server_stats()["pending"] == 0,
        timeout=120,
        what="every publish answered and confirmed",
    )
    stats = system.server_stats()
    last_n = stats["sent"]
    assert (stats["lost"], stats["duplicates"]) == (0, 0), stats
    assert last_n - first_n >= 300
    meant = set(range(first_n + 1, last_n + 1))
    callbacks = [sub["callback"] for sub in system.subscriptions()]
    ids = assert_every_number_published_once(system, callbacks, first_n, meant)
    accepted, _ = system.server_ids()
    assert_all_accepted_were_published(system, accepted)
    assert_each_client_got_every_seq_in_order_since(system, start["seq"])
    assert len(system.subscriptions()) == 3  # subscriptions survived the crashes
    print(  # the figures of the closing note
        f"kill test: meant {len(meant)}, published {len(ids)}, duplicates"
        f" {stats['duplicates']}, lost {stats['lost']}, retries {stats['retries']},"
        f" replayed {stats['replayed']}"
    )


def test_graceful_restart_under_load_loses_nothing_and_frees_sync_publishers(
    under_load: System,
):
    system = under_load
    start = marker(system)
    poll(lambda: system.stats()["last_seq"] >= start["seq"] + 100, what="load")
    system.compose("restart", "broker")
    system.wait_ready()
    poll(lambda: system.stats()["published"] >= 100, what="publishing after the restart")
    accepted, _ = system.server_ids()
    assert_all_accepted_were_published(system, accepted)
    assert_each_client_got_every_seq_in_order_since(system, start["seq"])
    # A sync publisher is answered by its timeout at the latest, restart or not.
    assert system.server_stats()["max_sync_wait_s"] <= SYNC_TIMEOUT + 3


def test_hung_and_failing_subscribers_are_removed_and_the_healthy_one_misses_nothing(
    under_load: System,
):
    system = under_load
    hung, failing, healthy = system.subscriptions()
    hung_container = next(
        c for c in system.client_containers() if system.container_ip(c) in hung["callback"]
    )
    start = marker(system)
    system.call("PUT", failing["callback"].replace("/messages", "/fault"), {"status": 500})
    system.docker("pause", hung_container)
    try:
        poll(
            lambda: (
                {s["id"] for s in system.subscriptions()} <= {healthy["id"], failing["id"]}
                and hung["id"] not in {s["id"] for s in system.subscriptions()}
            ),
            what="the hung subscriber's removal",
        )
        poll(
            lambda: failing["id"] not in {s["id"] for s in system.subscriptions()},
            what="the failing subscriber's removal",
        )
        end = marker(system)
        got = seqs_between(system.received(healthy["callback"]), start["seq"], end["seq"])
        assert got == list(range(start["seq"], end["seq"] + 1))
        assert system.stats()["removed"] >= 2
    finally:
        system.call("PUT", failing["callback"].replace("/messages", "/fault"), {"status": None})
        system.docker("unpause", hung_container)


def test_bad_input_gets_a_clear_4xx_and_leaves_the_queue_alone(system: System):
    system.set_rate(0)
    try:
        # Nothing of the load generator's may be accepted during the count below (a
        # publish still retried after an earlier test's restarts, say), and its sync
        # publishes need subscribers to be answered: settle first, then no clients.
        system.settled(confirmed=False)
        system.scale_clients(0)
        poll(lambda: system.stats()["unpublished"] == system.stats()["queue_length"])
        kept = [marker(system, "async") for _ in range(3)]

        def send(method: str, path: str, raw: str | None, headers: dict[str, str]):
            headers["Authorization"] = f"Bearer {system.token_for(method, path)}"
            body = raw.encode() if raw else b""
            url = f"{system.broker_url}{path}"
            return system.http.request(method, url, body, headers, timeout=10)

        # Bound before the snapshot (a replay on a second run: it creates nothing).
        first_key, first_body = FIRST_KEYED
        json_type = {"Content-Type": "application/json"}
        bound, _ = send("POST", "/messages", first_body, json_type | {"Idempotency-Key": first_key})
        assert bound == 202
        before = system.stats()
        for method, path, raw, content_type, status, message in BAD_INPUTS:
            headers = {"Content-Type": content_type} if content_type else {}
            got, answer = send(method, path, raw, headers)
            assert (got, message) == (status, message), (method, path, (raw or "")[:80], answer)
            assert b'"error"' in answer and b'"detail"' in answer
        for key, raw, status, message in BAD_KEYS:
            got, answer = send("POST", "/messages", raw, json_type | {"Idempotency-Key": key})
            assert got == status and message.encode() in answer, (key[:20], raw, answer)
        after = system.stats()
        for key in ("accepted", "queue_length", "last_seq", "unpublished"):
            assert after[key] == before[key], key
        queued = [system.message(m["id"]) for m in kept]
        assert [m["status"] for m in queued] == ["queued"] * 3
        assert [m["seq"] for m in queued] == [m["seq"] for m in kept]
    finally:
        system.set_rate(5)
        system.scale_clients(3)
