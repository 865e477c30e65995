"""Cluster mode (docker-compose.cluster.yml): two broker replicas over one Valkey behind
HAProxy. Exactly one replica owns the queue and serves; when it is killed under load the
other takes the lease over, the load balancer finds it, and the load generator's retries
(with their Idempotency-Keys) carry every message through: each client gets every message
exactly once, in seq order. The same holds through the other faults: Valkey killed, the
owner frozen past its lease and woken, the replicas scaled up and down. A deployment of its
own (its own project, ports and network)."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

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


@contextlib.contextmanager
def deployment(
    request: pytest.FixtureRequest, project: str, files: list[str], port: int, subnet: str
) -> Iterator[System]:
    """A cluster-mode deployment of its own: compose `project` from `files` (after
    docker-compose.yml), the load balancer on host `port`, the load generator on the next
    one, its network `subnet`.0/24; logs kept if a test failed."""
    system = System(manage=True)
    system.broker_url = f"http://localhost:{port}"  # the load balancer
    system.server_url = f"http://localhost:{port + 1}"
    compose_files = [ROOT / "docker-compose.yml", *(ROOT / name for name in files)]
    system.env |= {
        "COMPOSE_PROJECT_NAME": project,
        "COMPOSE_FILE": ":".join(str(path) for path in compose_files),
        "GROKER_BROKER_PORT": str(port),
        "GROKER_SERVER_PORT": str(port + 1),
        "GROKER_SUBNET": f"{subnet}.0/24",
        "GROKER_GATEWAY": f"{subnet}.1",
        "GROKER_ALLOWED_NETWORKS": f"{subnet}.0/24",
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
            logs = ROOT / "test-artifacts" / f"{project}-compose.log"
            logs.parent.mkdir(exist_ok=True)
            logs.write_text(system.logs())
            print(f"compose logs of {project}: {logs}")
        system.compose("down", "-v", "--remove-orphans", timeout=180)
        system.http.close()


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[System]:
    with deployment(
        request, "groker-cluster", ["docker-compose.cluster.yml"], 8200, "172.31.0"
    ) as system:
        yield system


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
    """A replica's own /readyz, asked directly (not through the load balancer), on a
    connection closed after it: a replica stopping gracefully waits for its idle keep-alive
    connections (gunicorn's keepalive, 5 s) before it exits and hands the lease over."""
    try:
        url = f"http://{ip}:8000/readyz"
        close = {"Connection": "close"}
        return system.http.exchange_json("GET", url, timeout=2, extra_headers=close)[0]
    except (OSError, HTTPParseError):
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


def bring_back(system: System, brokers: int = BROKERS) -> str:
    """`brokers` replicas running (those stopped or killed before come back as standbys,
    new ones are added, extra ones removed), exactly one of them ready, and the load
    balancer routing to it; returns its host name."""
    system.compose(
        "up", "-d", "--no-recreate", "--wait", "--wait-timeout", "120",
        "--scale", f"broker={brokers}", "--scale", f"client={CLIENTS}",
    )  # fmt: skip

    def one_ready() -> str | None:
        found = replicas(system)
        ready = [h for h, ip in found.items() if readiness(system, ip) == 200]
        if len(found) != brokers or len(ready) != 1:
            return None
        try:
            return ready[0] if answering_replica(system) == ready[0] else None
        except (OSError, HTTPParseError, AssertionError):
            return None

    return poll(one_ready, timeout=LEASE_SECONDS + 60, what=f"{brokers} replicas, one ready")


def start_load(system: System, rate: float = 50) -> int:
    """Publish `rate` messages a second (one in ten sync) and wait until the broker takes
    them; returns the load generator's count before: its messages numbered above it are
    the ones this test sends."""
    first_n = system.server_stats()["sent"]
    system.set_rate(rate, sync_ratio=0.1)
    floor = system.server_stats()["accepted"]
    poll(lambda: system.server_stats()["accepted"] >= floor + 2 * rate, what="load")
    return first_n


def more_accepted(system: System, how_many: int, what: str, timeout: float = 60) -> None:
    """Wait until the broker has accepted `how_many` more of the load generator's messages."""
    floor = system.server_stats()["accepted"]
    poll(lambda: system.server_stats()["accepted"] >= floor + how_many, timeout=timeout, what=what)


def assert_seqs_only_go_up(system: System, callbacks: list[str]) -> None:
    """Each client's seqs, repeats (same id) dropped, only go up; and across every client
    one message has one seq and one seq one message: a replica that lost the queue can
    neither renumber a message nor give a seq to another one."""
    seq_of: dict[str, int] = {}
    id_of: dict[int, str] = {}
    for callback in callbacks:
        seen: set[str] = set()
        seqs = []
        for message in system.received(callback):
            message_id, seq = message["id"], message["seq"]
            first_seq = seq_of.setdefault(message_id, seq)
            assert first_seq == seq, f"{message_id} delivered as seq {first_seq} and {seq}"
            first_id = id_of.setdefault(seq, message_id)
            assert first_id == message_id, f"seq {seq} delivered as {first_id} and {message_id}"
            if message_id not in seen:
                seen.add(message_id)
                seqs.append(seq)
        backwards = [(a, b) for a, b in itertools.pairwise(seqs) if a >= b]
        assert not backwards, f"{callback}: seq went back {backwards[:5]}"


def assert_every_message_once_in_order(
    system: System, first_n: int, at_least: int = 100
) -> tuple[dict, dict[int, str]]:
    """Stop the load and let it settle, then: the load generator lost none of its messages
    numbered above `first_n` and was never answered two ids for one; every client got each
    of them as one message, the same at every client, published says the broker; and the
    seqs only go up. Returns the settled stats and number -> id."""
    system.set_rate(0)  # what it meant to send is now fixed; its retries settle
    stats = system.settled()
    assert (stats["lost"], stats["duplicates"]) == (0, 0), stats
    meant = set(range(first_n + 1, stats["sent"] + 1))
    assert len(meant) >= at_least, stats
    subscriptions = system.subscriptions()
    assert len(subscriptions) == CLIENTS  # they live in Valkey: whoever owns it has them
    callbacks = [sub["callback"] for sub in subscriptions]
    poll(
        lambda: all(set(numbered_ids(system, c, first_n)) >= meant for c in callbacks),
        what="every message at every client",
    )
    ids = assert_every_number_published_once(system, callbacks, first_n, meant)
    assert_seqs_only_go_up(system, callbacks)
    return stats, ids


def figures(stats: dict, ids: dict[int, str]) -> str:
    return (
        f"published {len(ids)}, lost {stats['lost']}, duplicates {stats['duplicates']},"
        f" retries {stats['retries']}, replayed {stats['replayed']}"
    )


def healthy(system: System, container: str) -> bool:
    status = system.docker("inspect", "-f", "{{.State.Health.Status}}", container)
    return status.strip() == "healthy"


def waiting_request(
    ip: str, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
) -> http.client.HTTPConnection:
    """A request sent straight to a frozen replica: the kernel takes the connection and the
    request in, and the replica reads them first thing when it wakes."""
    connection = http.client.HTTPConnection(ip, 8000, timeout=10)
    body = None if payload is None else json.dumps(payload)
    connection.request(method, path, body, {"Content-Type": "application/json"} | (headers or {}))
    return connection


def answer_to(connection: http.client.HTTPConnection) -> int | None:
    """The status of a waiting request's answer; None if the replica exited first."""
    try:
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def valkey_rows(system: System) -> str:
    """Every message row Valkey holds, read with valkey-cli (the test looks for one that
    must not be there)."""
    prefix = BrokerSettings.model_fields["valkey_prefix"].default
    key = f"{{{os.environ.get('GROKER_VALKEY_PREFIX') or prefix}}}:messages"
    return system.compose("exec", "-T", "valkey", "valkey-cli", "HVALS", key)


def container_logs(container: str, since: float) -> str:
    """A container's output (stdout and stderr) since a time.time()."""
    done = subprocess.run(
        ["docker", "logs", "--since", f"{since:.3f}", container],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    return done.stdout


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
    # The dashboard shows every replica and which one holds the lanes.
    shown = system.broker("GET", "/dashboard/snapshot")[1]["replicas"]
    assert sorted((r["name"], r["role"]) for r in shown) == sorted(
        (hostname, "owner" if hostname == active else "standby") for hostname in found
    )
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
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(
        f"cluster kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)},"
        f" failover {gap:.2f} s"
    )


def test_a_graceful_stop_hands_the_queue_over_at_once(cluster: System):
    """SIGTERM (docker stop, a rolling update): the owner drains, exits and hands the lease
    over, so a standby serves well within the lease time."""
    system = cluster
    active = bring_back(system)  # the replica killed before comes back, as a standby
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


def test_valkey_killed_under_load_loses_nothing_acknowledged(cluster: System):
    """kill -9 Valkey (appendfsync always: what it answered is on its disk) under load, and
    keep it down past the lease: the owner can neither write nor renew, so it gives the
    queue up and comes back as a standby like the others; publishers are answered 503
    meanwhile and retry. Once Valkey is back, a replica takes the lease, reads the queue
    from Valkey's append-only file, and every message acknowledged before, during or after
    reaches every client once, in seq order."""
    system = cluster
    owner = bring_back(system)
    first_n = start_load(system)
    (valkey,) = system.compose("ps", "-q", "valkey").split()
    system.docker("kill", "-s", "KILL", valkey)
    killed_at = time.monotonic()
    poll(
        lambda: all(readiness(system, ip) != 200 for ip in replicas(system).values()),
        timeout=LEASE_SECONDS + 30,
        what="no replica ready without Valkey",
    )
    unready = time.monotonic() - killed_at
    # Down past the lease, so that the lease Valkey held has run out as well when it comes
    # back (its expiry is an absolute time in the append-only file).
    time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1 - time.monotonic()))
    system.docker("start", valkey)  # restart: unless-stopped leaves a killed container alone
    started_at = time.monotonic()

    probe = f"cluster-valkey-{uuid.uuid4().hex}"
    successor = poll(
        lambda: publish_probe(system, probe), timeout=LEASE_SECONDS + 60, what="a publish"
    )
    back = time.monotonic() - started_at
    print(
        f"valkey killed: {owner} not ready after {unready:.2f} s, Valkey down for"
        f" {started_at - killed_at:.2f} s, {successor} answering {back:.2f} s after its start"
    )
    more_accepted(system, 100, "load after Valkey's restart")
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(f"cluster valkey kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")


def test_a_paused_owner_is_fenced_off_when_it_wakes(cluster: System):
    """The owner frozen (docker pause: every process of it stopped, as by SIGSTOP) past the
    lease: a standby takes over and serves. Woken, the old owner has lost the lease: the
    requests waiting for it (a health check, a publish) are not answered as by the owner,
    its late writes are refused (the store's fenced script), it exits and comes back as a
    standby, and nothing it does moves the queue back: no client sees a seq go backwards, a
    message with two seqs or a seq with two messages, and nothing acknowledged is lost."""
    system = cluster
    owner = bring_back(system)
    container = container_of(system, owner)
    owner_ip = replicas(system)[owner]
    first_n = start_load(system)
    system.docker("pause", container)
    paused_at = time.monotonic()
    try:
        probe = f"cluster-pause-{uuid.uuid4().hex}"
        successor = poll(
            lambda: (replica := publish_probe(system, probe)) not in (None, owner) and replica,
            timeout=LEASE_SECONDS + 30,
            what="a publish to another replica",
        )
        gap = time.monotonic() - paused_at
        more_accepted(system, 100, "load on the new owner")
        # What the frozen replica reads first thing when it wakes.
        late_check = waiting_request(owner_ip, "GET", "/readyz")
        late_key = f"cluster-late-{uuid.uuid4().hex}"
        late_publish = waiting_request(
            owner_ip,
            "POST",
            "/messages",
            {"body": {"late": late_key}},
            {"Authorization": f"Bearer {system.tokens['publish']}", "Idempotency-Key": late_key},
        )
    finally:
        woken_at = time.time()
        system.docker("unpause", container)
    paused_for = time.monotonic() - paused_at
    checked, published = answer_to(late_check), answer_to(late_publish)

    poll(  # gunicorn's line for the fresh worker it starts when the old one exits
        lambda: "Booting worker" in container_logs(container, woken_at),
        what=f"{owner} to exit and start a fresh worker",
    )
    poll(lambda: readiness(system, owner_ip) == 503, what=f"{owner} back as a standby")
    poll(lambda: healthy(system, container), what=f"{owner} healthy again")
    assert answering_replica(system) == successor
    fenced = sum("fenced" in line for line in container_logs(container, woken_at).splitlines())
    # Its late publish was refused, or cut off when it exited; either way never stored.
    assert published not in (200, 202), f"{owner} accepted a publish after its lease ran out"
    assert late_key not in valkey_rows(system), "a write after the lease ran out was stored"
    more_accepted(system, 50, "load after the old owner woke")

    stats, ids = assert_every_message_once_in_order(system, first_n)
    callbacks = [sub["callback"] for sub in system.subscriptions()]
    assert not any(late_key in json.dumps(system.received(c)) for c in callbacks)
    print(
        f"paused owner: {owner} paused {paused_for:.2f} s, {successor} answering after"
        f" {gap:.2f} s; woken, it answered /readyz {checked} and a publish {published},"
        f" {fenced} log line(s) about fenced writes, and exited"
    )
    print(f"cluster pause test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")
    assert checked != 200, f"{owner}, woken after its lease ran out, answered /readyz 200"


def test_scaling_the_replicas_up_and_down_under_load_loses_nothing(cluster: System):
    """1 -> 3 -> 1 replicas under load (compose --scale, which keeps the lowest-numbered
    replicas when it scales down). The replicas added join as standbys and the load
    balancer finds them through Docker's DNS: with three, the owner is restarted (it hands
    over) so that one of the new ones serves; scaling back to one removes that one (SIGTERM:
    it hands over again). Publishing goes on throughout, nothing lost or published twice."""
    system = cluster

    def lineup(owner: str) -> str:  # the replicas running, the owner starred
        return " ".join(h + "*" * (h == owner) for h in sorted(replicas(system)))

    steps = [lineup(bring_back(system))]
    first_n = start_load(system)
    first = bring_back(system, 1)
    steps.append(lineup(first))
    more_accepted(system, 100, "load with one replica")

    assert bring_back(system, 3) == first
    added = set(replicas(system)) - {first}
    system.docker("restart", container_of(system, first))
    probe = f"cluster-scale-{uuid.uuid4().hex}"
    successor = poll(
        lambda: (replica := publish_probe(system, probe)) not in (None, first) and replica,
        timeout=LEASE_SECONDS + 30,
        what="a publish to a replica added",
    )
    assert successor in added
    assert bring_back(system, 3) == successor  # the restarted one is back, as a standby
    steps.append(lineup(successor))
    more_accepted(system, 100, "load with three replicas")

    last = bring_back(system, 1)
    assert successor not in replicas(system), "compose kept the owner: no handover to test"
    steps.append(lineup(last))
    more_accepted(system, 100, "load with one replica again")
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(f"scaled 2 -> 1 -> 3 -> 1, the replicas (*owner): {' -> '.join(steps)}")
    print(f"cluster scale test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")
