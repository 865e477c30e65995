"""Cluster mode (docker-compose.cluster.yml): two broker replicas over one Valkey behind
HAProxy. Exactly one replica owns the queue and serves; when it is killed under load the
other takes the lease over, the load balancer finds it, and the load generator's retries
(with their Idempotency-Keys) carry every message through: each client gets every message
exactly once, in seq order. A deployment of its own (its own project, ports and network)."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from geventhttpclient.response import HTTPParseError

from broker.settings import BrokerSettings
from groker_common.testing import poll

from .conftest import ROOT, System
from .test_faults import assert_every_number_published_once, numbered_ids

BROKERS = 2
CLIENTS = 2
# How long a standby waits at most before it takes a dead owner's lease over.
LEASE_SECONDS = float(
    os.environ.get("GROKER_LEASE_SECONDS") or BrokerSettings.model_fields["lease_seconds"].default
)
LOGS = ROOT / "test-artifacts" / "cluster-compose.log"


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[System]:
    system = System(manage=True)
    system.broker_url = "http://localhost:8200"  # the load balancer
    system.server_url = "http://localhost:8201"
    compose_files = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cluster.yml"]
    system.env |= {
        "COMPOSE_PROJECT_NAME": "groker-cluster",
        "COMPOSE_FILE": ":".join(str(path) for path in compose_files),
        "GROKER_BROKER_PORT": "8200",
        "GROKER_SERVER_PORT": "8201",
        "GROKER_SUBNET": "172.31.0.0/24",
        "GROKER_GATEWAY": "172.31.0.1",
        "GROKER_ALLOWED_NETWORKS": "172.31.0.0/24",
        "GROKER_RATE": "20",
        "GROKER_SYNC_TIMEOUT": "10",
        "GROKER_KEEP_RECENT": "20000",
        "GROKER_RESUBSCRIBE_INTERVAL": "1",
        "GROKER_DELIVERY_TIMEOUT": "2",
    }
    failed_before = request.session.testsfailed
    system.compose("down", "-v", "--remove-orphans", timeout=120)
    try:
        system.compose(
            "up", "-d", "--build", "--wait", "--wait-timeout", "180",
            "--scale", f"broker={BROKERS}", "--scale", f"client={CLIENTS}",
        )  # fmt: skip
        system.wait_ready()
        system.load_tokens()
        poll(lambda: len(system.subscriptions()) == CLIENTS, what="every client subscribed")
        yield system
    finally:
        if request.session.testsfailed > failed_before:
            LOGS.parent.mkdir(exist_ok=True)
            LOGS.write_text(system.logs())
            print(f"compose logs of the cluster: {LOGS}")
        system.compose("down", "-v", "--remove-orphans", timeout=180)
        system.http.close()


def replicas(system: System) -> dict[str, str]:
    """Each running broker container's host name (what X-Groker-Replica says) -> its IP."""
    found = {}
    for container in system.compose("ps", "-q", "broker").split():
        hostname = system.docker("inspect", "-f", "{{.Config.Hostname}}", container).strip()
        found[hostname] = system.container_ip(container)
    return found


def container_of(system: System, hostname: str) -> str:
    """The broker container with this host name (compose's: its short id)."""
    (container,) = (
        c for c in system.compose("ps", "-q", "broker").split() if c.startswith(hostname)
    )
    return container


def readiness(system: System, ip: str) -> int:
    """A replica's own /readyz, asked directly (not through the load balancer)."""
    try:
        return system.call("GET", f"http://{ip}:8000/readyz", timeout=2)[0]
    except OSError:
        return 0


def answering_replica(system: System) -> str:
    """The replica the load balancer routes to, by the header every broker answer carries."""
    status, answer, headers = system.http.exchange_json(
        "GET", f"{system.broker_url}/stats", timeout=5
    )
    assert status == 200, answer
    return headers["x-groker-replica"]


def publish_probe(system: System, key: str) -> str | None:
    """Publish one message through the load balancer (again and again with the same key:
    at most one is queued); the replica that accepted it, None if none did."""
    try:
        status, _, headers = system.http.exchange_json(
            "POST",
            f"{system.broker_url}/messages",
            {"body": {"probe": key}},
            timeout=2,
            token=system.tokens["publish"],
            extra_headers={"Idempotency-Key": key},
        )
    except (OSError, HTTPParseError):  # refused, or cut off when HAProxy marked it down
        return None
    return headers["x-groker-replica"] if status == 202 else None


def settled(system: System, quiet: float = 2.0, timeout: float = 120) -> dict:
    """The load generator's stats once every message it sent was answered (accepted or
    lost) and confirmed, and nothing new was sent for `quiet` seconds: a message the loop
    was already waiting to send when it was paused may still go out."""
    deadline = time.monotonic() + timeout
    sent, since = -1, time.monotonic()
    while True:
        stats = system.server_stats()
        if stats["sent"] != sent:
            sent, since = stats["sent"], time.monotonic()
        answered = stats["in_flight"] == 0 and stats["accepted"] + stats["lost"] == sent
        if answered and stats["pending"] == 0 and time.monotonic() - since >= quiet:
            return stats
        assert time.monotonic() < deadline, f"the load generator did not settle: {stats}"
        time.sleep(0.2)


def test_exactly_one_replica_serves_through_the_load_balancer(cluster: System):
    system = cluster
    found = replicas(system)
    assert len(found) == BROKERS
    ready = {hostname for hostname, ip in found.items() if readiness(system, ip) == 200}
    assert len(ready) == 1, {hostname: readiness(system, ip) for hostname, ip in found.items()}
    (active,) = ready
    for hostname, ip in found.items():  # the standbys are alive, only not ready
        assert system.call("GET", f"http://{ip}:8000/healthz", timeout=2)[0] == 200, hostname
    assert {answering_replica(system) for _ in range(10)} == {active}
    stats = system.stats()
    assert stats["store"] == "valkey", stats
    # A standby refuses the API itself, in the broker's error shape, with Retry-After.
    (standby_ip,) = (ip for hostname, ip in found.items() if hostname != active)
    status, answer, headers = system.http.exchange_json(
        "POST",
        f"http://{standby_ip}:8000/messages",
        {"body": {"to": "a standby"}},
        timeout=5,
        token=system.tokens["publish"],
    )
    assert status == 503 and answer["error"] == "standby", answer
    assert "retry-after" in headers
    assert headers["x-groker-replica"] != active


def test_the_standby_takes_over_when_the_active_replica_is_killed_under_load(cluster: System):
    system = cluster
    first_n = system.server_stats()["sent"]  # numbers from here on are sent during the test
    floor = system.server_stats()["accepted"]
    poll(lambda: system.server_stats()["accepted"] >= floor + 40, what="load")
    active = answering_replica(system)
    container = container_of(system, active)
    accepted_at_kill = system.server_stats()["accepted"]
    system.docker("kill", "-s", "KILL", container)
    killed_at = time.monotonic()

    # Publishing through the load balancer works again once a standby holds the lease.
    probe = f"cluster-kill-{uuid.uuid4().hex}"
    successor = poll(
        lambda: publish_probe(system, probe), timeout=LEASE_SECONDS + 30, what="a publish"
    )
    gap = time.monotonic() - killed_at
    print(f"failover: {active} killed, {successor} answering after {gap:.2f} s")
    assert successor != active
    assert gap <= LEASE_SECONDS + 5, f"took {gap:.1f} s, the lease is {LEASE_SECONDS:.0f} s"
    assert answering_replica(system) == successor
    assert {h for h, ip in replicas(system).items() if readiness(system, ip) == 200} == {successor}

    # Keep the load on the new owner for a while, then let everything settle.
    poll(
        lambda: system.server_stats()["accepted"] >= accepted_at_kill + 100,
        timeout=60,
        what="load on the new owner",
    )
    system.set_rate(0)  # what it meant to send is now fixed; its retries settle
    stats = settled(system)
    last_n = stats["sent"]
    assert (stats["lost"], stats["duplicates"]) == (0, 0), stats
    meant = set(range(first_n + 1, last_n + 1))
    assert len(meant) >= 100

    subscriptions = system.subscriptions()
    assert len(subscriptions) == CLIENTS  # they live in Valkey: the successor has them
    callbacks = [sub["callback"] for sub in subscriptions]
    poll(
        lambda: all(set(numbered_ids(system, c, first_n)) >= meant for c in callbacks),
        what="every message at every client",
    )
    ids = assert_every_number_published_once(system, callbacks, first_n, meant)

    for callback in callbacks:
        # Repeats (a delivery under way when the owner died, sent again by its successor)
        # carry the same id: without them, the seqs only go up.
        seen: set[str] = set()
        seqs = []
        for message in system.received(callback):
            if message["id"] not in seen:
                seen.add(message["id"])
                seqs.append(message["seq"])
        assert all(a < b for a, b in itertools.pairwise(seqs)), callback

    print(  # the figures of the report
        f"cluster kill test: sent {len(meant)}, published {len(ids)}, duplicates"
        f" {stats['duplicates']}, lost {stats['lost']}, retries {stats['retries']},"
        f" replayed {stats['replayed']}, failover {gap:.2f} s"
    )


def test_a_graceful_stop_hands_the_queue_over_at_once(cluster: System):
    """SIGTERM (docker stop, a rolling update): the owner drains, exits and hands the lease
    over, so a standby serves well within the lease time."""
    system = cluster
    # The replica killed before comes back, as a standby.
    system.compose(
        "up", "-d", "--no-recreate", "--wait", "--wait-timeout", "120",
        "--scale", f"broker={BROKERS}", "--scale", f"client={CLIENTS}",
    )  # fmt: skip
    found = replicas(system)
    assert len(found) == BROKERS
    active = answering_replica(system)
    container = container_of(system, active)
    stopping = subprocess.Popen(["docker", "stop", container], stdout=subprocess.DEVNULL)
    stopped_at = time.monotonic()
    try:
        probe = f"cluster-stop-{uuid.uuid4().hex}"
        successor = poll(
            lambda: (replica := publish_probe(system, probe)) not in (None, active) and replica,
            timeout=LEASE_SECONDS + 30,
            what="a publish to another replica",
        )
        gap = time.monotonic() - stopped_at
    finally:
        stopping.wait(timeout=60)
    print(f"graceful handover: {active} stopped, {successor} answering after {gap:.2f} s")
    assert gap < LEASE_SECONDS, f"took {gap:.1f} s: the lease ran out instead of being handed over"
