"""Cluster mode (docker-compose.cluster.yml): three broker replicas over one Valkey behind
HAProxy. Every replica is ready and takes publishes (a standby through the cluster's inbox,
which the owner sequences) and relays the rest of the API to the one replica that owns the
queue: publishes answered by any replica still get one seq order, and every client gets
every message in it. When the owner is killed under load another replica takes the lease
over, the publishes waiting in the inbox are answered, and the load generator's retries
(with their Idempotency-Keys) carry every message through: each client gets every message
exactly once, in seq order. The same holds through the other faults: the owner stopped,
Valkey killed, the owner frozen past its lease and woken, the replicas scaled up and down.
A deployment of its own (its own project, ports and network)."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from geventhttpclient.response import HTTPParseError

from broker.settings import BrokerSettings
from groker_common.testing import poll

from .conftest import ROOT, System
from .test_faults import assert_every_number_published_once, numbered_ids

BROKERS = 3
CLIENTS = 2
# How long a standby waits at most before it takes a dead owner's lease over.
LEASE_SECONDS = float(
    os.environ.get("GROKER_LEASE_SECONDS") or BrokerSettings.model_fields["lease_seconds"].default
)
# Publishes one after the other, and subscriptions, sent through the load balancer.
SEQUENTIAL = 30
SUBSCRIPTIONS = 6


@contextlib.contextmanager
def deployment(
    request: pytest.FixtureRequest,
    project: str,
    files: list[str],
    port: int,
    subnet: str,
    brokers: int = BROKERS,
) -> Iterator[System]:
    """A cluster-mode deployment of its own: compose `project` from `files` (after
    docker-compose.yml) with `brokers` replicas, the load balancer on host `port`, the load
    generator on the next one, its network `subnet`.0/24; logs kept if a test failed."""
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
            "--scale", f"broker={brokers}", "--scale", f"client={CLIENTS}",
        )  # fmt: skip
        system.wait_ready()
        system.load_tokens()
        # Ready is any replica; the subscriptions are the owner's.
        poll(lambda: owner_of(system), timeout=LEASE_SECONDS + 30, what="a replica owning")
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


def owner_of(system: System, timeout: float = 5) -> str | None:
    """The replica that owns the queue, as /stats through the load balancer names it (a
    standby relays it to the owner); None while no owner answers within `timeout`."""
    try:
        status, answer = system.broker("GET", "/stats", timeout=timeout)
    except (OSError, HTTPParseError):
        return None
    return answer.get("replica") if status == 200 else None


def roster(system: System, base_url: str | None = None) -> dict[str, str]:
    """The replicas' roster the dashboard shows, name -> role, through the load balancer
    (or at `base_url`, one replica)."""
    url = f"{base_url or system.broker_url}/dashboard/snapshot"
    token = system.token_for("GET", "/dashboard/snapshot")
    status, answer = system.call("GET", url, timeout=5, token=token)
    assert status == 200, answer
    return {entry["name"]: entry["role"] for entry in answer["replicas"]}


def roster_now(system: System) -> dict[str, str] | None:
    """The roster through the load balancer, None while it cannot be had (no owner)."""
    try:
        return roster(system)
    except (OSError, HTTPParseError, AssertionError):
        return None


def publish_probe(system: System, key: str, timeout: float = 2) -> str | None:
    """Publish one message through the load balancer (again and again with the same key:
    at most one is queued); the replica that answered it 202, None if none did."""
    try:
        status, _, headers = system.http.exchange_json(
            "POST",
            f"{system.broker_url}/messages",
            {"body": {"probe": key}},
            timeout=timeout,
            token=system.tokens["publish"],
            extra_headers={"Idempotency-Key": key},
        )
    except (OSError, HTTPParseError):  # refused, or cut off when HAProxy marked it down
        return None
    return headers["x-groker-replica"] if status == 202 else None


def another_owner(system: System, than: str, timeout: float = LEASE_SECONDS + 30) -> str:
    """Wait until a replica other than `than` owns the queue; returns its name. Asked again
    every 2 s at most: a standby relays to the old owner until the new one has announced
    itself, and a frozen old owner never answers."""
    return poll(
        lambda: (owner := owner_of(system, timeout=2)) not in (None, than) and owner,
        timeout=timeout,
        what=f"a replica other than {than} owning the queue",
    )


def bring_back(system: System, brokers: int = BROKERS) -> str:
    """`brokers` replicas running (those stopped or killed before come back as standbys,
    new ones are added, extra ones removed), every one ready, the roster naming each of
    them, exactly one as the owner, and the load balancer relaying to it; returns its name."""
    system.compose(
        "up", "-d", "--no-recreate", "--wait", "--wait-timeout", "120",
        "--scale", f"broker={brokers}", "--scale", f"client={CLIENTS}",
    )  # fmt: skip

    def settled() -> str | None:
        found = replicas(system)
        if len(found) != brokers or any(readiness(system, ip) != 200 for ip in found.values()):
            return None
        owner = owner_of(system)
        if owner not in found:
            return None
        return owner if roster_now(system) == roles(found, owner) else None

    return poll(settled, timeout=LEASE_SECONDS + 60, what=f"{brokers} replicas, one owner")


def roles(found: dict[str, str], owner: str) -> dict[str, str]:
    return {hostname: "owner" if hostname == owner else "standby" for hostname in found}


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
    connection = http.client.HTTPConnection(ip, 8000, timeout=20)
    body = None if payload is None else json.dumps(payload)
    connection.request(method, path, body, {"Content-Type": "application/json"} | (headers or {}))
    return connection


def answer_to(connection: http.client.HTTPConnection) -> tuple[int | None, Any]:
    """A waiting request's answer, status and JSON body; (None, None) if the replica exited
    first."""
    try:
        response = connection.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException):
        return None, None
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode(errors="replace")


def valkey_rows(system: System, containing: str) -> int:
    """How many message rows Valkey holds with `containing` in them, read with valkey-cli
    (one row a line)."""
    prefix = BrokerSettings.model_fields["valkey_prefix"].default
    key = f"{{{os.environ.get('GROKER_VALKEY_PREFIX') or prefix}}}:messages"
    rows = system.compose("exec", "-T", "valkey", "valkey-cli", "HVALS", key)
    return sum(containing in row for row in rows.splitlines())


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


class Receiver:
    """Webhook callbacks on this host, at the deployment network's gateway, which is in
    GROKER_ALLOWED_NETWORKS: each path one subscriber, which echoes the subscription
    challenge and keeps the messages delivered to it (signatures unchecked)."""

    def __init__(self, address: str) -> None:
        self.received: dict[str, list[dict]] = defaultdict(list)
        lock = threading.Lock()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delivered = json.loads(raw or b"null")
                if isinstance(delivered, dict) and delivered.get("type") == "subscription.verify":
                    answer = json.dumps({"challenge": delivered["challenge"]}).encode()
                else:  # one message, or a batch of them
                    with lock:
                        batch = delivered if isinstance(delivered, list) else [delivered]
                        received[self.path].extend(batch)
                    answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def messages(self, path: str) -> list[dict]:
        return list(self.received[path])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def first_seen(messages: list[dict], ids: list[str]) -> list[tuple[str, int]]:
    """(id, seq) of the messages of `ids` in the order received, repeats dropped."""
    seen: dict[str, int] = {}
    for message in messages:
        if message["id"] in ids:
            seen.setdefault(message["id"], message["seq"])
    return list(seen.items())


def publish_through_the_load_balancer(
    system: System, count: int, tag: str
) -> list[tuple[str, int, str]]:
    """Publish `count` messages one after the other through the load balancer, one in five
    sync (answered once published); (id, seq, the replica that answered) of each."""
    published = []
    for i in range(count):
        mode = "sync" if i % 5 == 4 else "async"
        status, answer, headers = system.http.exchange_json(
            "POST",
            f"{system.broker_url}/messages",
            {"body": {tag: i}, "mode": mode},
            timeout=30,
            token=system.tokens["publish"],
        )
        assert status == (200 if mode == "sync" else 202), (status, answer, headers)
        assert mode == "async" or answer["status"] == "published", answer
        published.append((answer["id"], answer["seq"], headers["x-groker-replica"]))
    return published


def test_every_replica_takes_publishes_and_the_owner_gives_them_one_order(cluster: System):
    """Three replicas, every one ready behind the load balancer, one owner. One publisher's
    messages, one after the other through the load balancer, are answered by more than one
    replica and still get consecutive seqs, and every client gets them in that order. A
    subscription made through the load balancer works whichever replica took it, and every
    replica gives the same figures (the owner's, relayed) and the same roster."""
    system = cluster
    owner = bring_back(system)
    found = replicas(system)
    assert len(found) == BROKERS
    assert {h: readiness(system, ip) for h, ip in found.items()} == dict.fromkeys(found, 200)
    assert roster(system) == roles(found, owner)
    assert system.stats()["store"] == "valkey"
    load = system.server_stats()
    system.set_rate(0)  # this test's publisher alone: its seqs are consecutive
    try:
        system.settled()
        published = publish_through_the_load_balancer(system, SEQUENTIAL, "one publisher")
        ids = [message_id for message_id, _, _ in published]
        seqs = [seq for _, seq, _ in published]
        takers = Counter(replica for _, _, replica in published)
        print(f"{SEQUENTIAL} publishes one after the other, answered by (*owner):", end=" ")
        print(", ".join(f"{h}{'*' * (h == owner)} {n}" for h, n in sorted(takers.items())))
        assert set(takers) <= set(found)
        assert len(takers) > 1, f"one replica answered every publish: {takers}"
        assert seqs == list(range(seqs[0], seqs[0] + SEQUENTIAL)), seqs

        callbacks = [sub["callback"] for sub in system.subscriptions()]
        assert len(callbacks) == CLIENTS
        poll(
            lambda: all(set(ids) <= {m["id"] for m in system.received(c)} for c in callbacks),
            what="every message at every client",
        )
        for callback in callbacks:
            assert first_seen(system.received(callback), ids) == list(zip(ids, seqs, strict=True))
        assert_seqs_only_go_up(system, callbacks)

        receiver = Receiver(system.env["GROKER_GATEWAY"])
        made: dict[str, tuple[str, str]] = {}  # subscription id -> its path, who took it
        try:
            for i in range(SUBSCRIPTIONS):
                status, answer, headers = system.http.exchange_json(
                    "POST",
                    f"{system.broker_url}/subscriptions",
                    {"callback": f"{receiver.url}/hook-{i}"},
                    timeout=15,
                    token=system.tokens["manage"],
                )
                assert status == 201, answer
                made[answer["id"]] = (f"/hook-{i}", headers["x-groker-replica"])
            took = Counter(replica for _, replica in made.values())
            print(f"{SUBSCRIPTIONS} subscriptions through the load balancer, taken by {took}")
            assert set(took) - {owner}, "the owner took every subscription: none was relayed"
            more = publish_through_the_load_balancer(system, 5, "to the new subscriptions")
            more_ids = [message_id for message_id, _, _ in more]
            expected = [(message_id, seq) for message_id, seq, _ in more]
            poll(
                lambda: all(
                    set(more_ids) <= {m["id"] for m in receiver.messages(path)}
                    for path, _ in made.values()
                ),
                what="the new messages at every new subscription",
            )
            for path, _ in made.values():
                assert first_seen(receiver.messages(path), more_ids) == expected, path

            # Every replica answers the same: the owner's figures, roster and messages
            # (relayed by the standbys, each naming itself in X-Groker-Replica).
            last_seq = more[-1][1]
            for hostname, ip in found.items():
                base = f"http://{ip}:8000"
                status, stats, headers = system.http.exchange_json(
                    "GET", f"{base}/stats", timeout=5, token=system.token_for("GET", "/stats")
                )
                assert status == 200, stats
                assert headers["x-groker-replica"] == hostname
                assert (stats["replica"], stats["last_seq"], stats["subscribers"]) == (
                    owner,
                    last_seq,
                    CLIENTS + SUBSCRIPTIONS,
                ), (hostname, stats)
                assert roster(system, base) == roles(found, owner), hostname
                for message_id, seq, _ in more:
                    path = f"/messages/{message_id}"
                    status, message = system.call(
                        "GET", base + path, timeout=5, token=system.token_for("GET", path)
                    )
                    assert (status, message["seq"], message["status"]) == (200, seq, "published")
                for subscription_id, (path, _) in made.items():
                    path = f"/subscriptions/{subscription_id}"
                    status, subscription = system.call(
                        "GET", base + path, timeout=5, token=system.token_for("GET", path)
                    )
                    assert status == 200, subscription
            print(f"/stats through each replica: last_seq {last_seq}, replica {owner}")
        finally:
            for subscription_id in made:
                path = f"/subscriptions/{subscription_id}"
                status, _ = system.broker("DELETE", path, timeout=15)
                assert status in (200, 204), (path, status)
            receiver.close()
        assert len(system.subscriptions()) == CLIENTS
    finally:
        system.set_rate(load["rate"], sync_ratio=load["sync_ratio"])


def lanes(system: System) -> dict[str, str]:
    """Each subscription's callback -> the replica that delivers to it (the dashboard's)."""
    status, snapshot = system.broker("GET", "/dashboard/snapshot")
    assert status == 200, snapshot
    return {sub["callback"]: sub["replica"] for sub in snapshot["subscribers"]}


def lanes_off(system: System, owner: str) -> dict[str, str]:
    """Every client's lane on a replica that does not own the queue: a client whose lane
    the owner holds is unsubscribed and restarted, and subscribes anew (the owner opens a
    new lane on the replica holding the fewest, itself counting one lane more)."""
    for callback, holder in lanes(system).items():
        if holder != owner:
            continue
        (container,) = (
            c for c in system.client_containers() if f"//{system.container_ip(c)}:" in callback
        )
        sub_id = next(s["id"] for s in system.subscriptions() if s["callback"] == callback)
        assert system.broker("DELETE", f"/subscriptions/{sub_id}")[0] == 204
        system.docker("restart", container)
        poll(lambda: len(system.subscriptions()) == CLIENTS, what="the client subscribed anew")
    held = lanes(system)
    assert owner not in held.values(), held
    return held


def test_a_killed_replica_that_delivers_for_the_owner_loses_nothing(cluster: System):
    """kill -9 a replica holding lanes under load: the owner moves them within the lease,
    and every client still gets every message, in seq order (a repeat at most of what was
    out at the kill)."""
    system = cluster
    owner = bring_back(system)
    held = lanes_off(system, owner)
    victim = next(iter(held.values()))
    moved = [callback for callback, holder in held.items() if holder == victim]
    load = system.server_stats()
    try:
        lane_holder_killed(system, owner, victim, moved)
    finally:  # the load the tests after this one expect
        system.set_rate(load["rate"], sync_ratio=load["sync_ratio"])


def lane_holder_killed(system: System, owner: str, victim: str, moved: list[str]) -> None:
    first_n = start_load(system)
    system.docker("kill", "-s", "KILL", container_of(system, victim))
    killed_at = time.monotonic()
    last_seq = system.stats()["last_seq"]

    def resumed() -> bool:
        # Every moved lane delivered a message published after the kill.
        return all(
            any(m["seq"] > last_seq for m in system.received(callback)) for callback in moved
        )

    poll(resumed, timeout=LEASE_SECONDS + 30, what="delivery to the moved lanes")
    took = time.monotonic() - killed_at
    now_held = lanes(system)
    print(f"lanes: {victim} killed holding {len(moved)}; delivering again after {took:.2f} s;"
          f" now {sorted(now_held.values())}")  # fmt: skip
    assert took <= LEASE_SECONDS + 2, f"took {took:.1f} s, the lease is {LEASE_SECONDS}"
    assert victim not in now_held.values()
    assert owner_of(system) == owner  # the owner was not touched
    more_accepted(system, 100, "load after the move")
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(f"cluster lane holder kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")


def test_another_replica_takes_over_when_the_owner_is_killed_under_load(cluster: System):
    system = cluster
    owner = bring_back(system)
    first_n = system.server_stats()["sent"]  # numbers from here on are sent during the test
    floor = system.server_stats()["accepted"]
    poll(lambda: system.server_stats()["accepted"] >= floor + 40, what="load")
    container = container_of(system, owner)
    accepted_at_kill = system.server_stats()["accepted"]
    system.docker("kill", "-s", "KILL", container)
    killed_at = time.monotonic()

    # A publish through the load balancer is answered once a standby holds the lease: one
    # that a standby took waits in the inbox until then.
    probe = f"cluster-kill-{uuid.uuid4().hex}"
    answered_by = poll(
        lambda: publish_probe(system, probe, timeout=LEASE_SECONDS + 5),
        timeout=LEASE_SECONDS + 30,
        what="a publish",
    )
    answered = time.monotonic() - killed_at
    successor = another_owner(system, owner)
    took_over = time.monotonic() - killed_at
    print(
        f"failover: {owner} killed; the first publish after it answered by {answered_by}"
        f" after {answered:.2f} s; {successor} owning after {took_over:.2f} s"
    )
    assert answered <= LEASE_SECONDS + 5, f"took {answered:.1f} s, the lease is {LEASE_SECONDS}"
    assert took_over <= LEASE_SECONDS + 5, f"took {took_over:.1f} s, the lease is {LEASE_SECONDS}"
    survivors = replicas(system)
    assert owner not in survivors
    assert {h: readiness(system, ip) for h, ip in survivors.items()} == dict.fromkeys(
        survivors, 200
    )
    assert roster(system)[successor] == "owner"

    # Keep the load on the new owner for a while, then let everything settle.
    poll(
        lambda: system.server_stats()["accepted"] >= accepted_at_kill + 100,
        timeout=60,
        what="load on the new owner",
    )
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(
        f"cluster kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)},"
        f" failover {took_over:.2f} s"
    )


def test_a_graceful_stop_hands_the_queue_over_at_once(cluster: System):
    """SIGTERM (docker stop, a rolling update): the owner drains, exits and hands the lease
    over, so a standby owns the queue well within the lease time."""
    system = cluster
    owner = bring_back(system)  # the replica killed before comes back, as a standby
    container = container_of(system, owner)
    stopping = subprocess.Popen(["docker", "stop", container], stdout=subprocess.DEVNULL)
    stopped_at = time.monotonic()
    try:
        successor = another_owner(system, owner)
        gap = time.monotonic() - stopped_at
        probe = f"cluster-stop-{uuid.uuid4().hex}"
        answered_by = poll(lambda: publish_probe(system, probe), what="a publish")
    finally:
        stopping.wait(timeout=60)
    print(
        f"graceful handover: {owner} stopped, {successor} owning after {gap:.2f} s"
        f" (a publish then answered by {answered_by})"
    )
    assert gap < LEASE_SECONDS, f"took {gap:.1f} s: the lease ran out instead of being handed over"


def test_valkey_killed_under_load_loses_nothing_acknowledged(cluster: System):
    """kill -9 Valkey (appendfsync always: what it answered is on its disk) under load, and
    keep it down past the lease: the owner can neither write nor renew, so it gives the
    queue up and comes back as a standby like the others; every replica refuses publishes
    meanwhile (503: they cannot put them in the inbox), and publishers retry. Once Valkey
    is back, a replica takes the lease, reads the queue from Valkey's append-only file, and
    every message acknowledged before, during or after reaches every client once, in seq
    order."""
    system = cluster
    owner = bring_back(system)
    container = container_of(system, owner)
    first_n = start_load(system)
    (valkey,) = system.compose("ps", "-q", "valkey").split()
    since = time.time() - 1
    system.docker("kill", "-s", "KILL", valkey)
    killed_at = time.monotonic()
    poll(
        lambda: "no longer owns the queue" in container_logs(container, since),
        timeout=LEASE_SECONDS + 30,
        what=f"{owner} to give the queue up without Valkey",
    )
    gave_up = time.monotonic() - killed_at
    # No replica can take a publish without Valkey (nor relay a request to an owner): each
    # says so with 503 and Retry-After, which publishers honour.
    refusals = {}
    for hostname, ip in replicas(system).items():
        for method, path, payload in (
            ("POST", "/messages", {"body": {"without": "valkey"}}),
            ("GET", "/stats", None),
        ):
            try:
                status, answer, headers = system.http.exchange_json(
                    method,
                    f"http://{ip}:8000{path}",
                    payload,
                    timeout=15,
                    token=system.token_for(method, path),
                )
            except (OSError, HTTPParseError) as exc:  # its worker restarting
                refusals[hostname, path] = type(exc).__name__
                continue
            error = answer["error"] if isinstance(answer, dict) else answer
            refusals[hostname, path] = f"{status} {error}"
            assert status == 503 and "retry-after" in headers, (hostname, path, status, answer)
    print(f"valkey killed, answers of each replica: {refusals}")
    # Down past the lease, so that the lease Valkey held has run out as well when it comes
    # back (its expiry is an absolute time in the append-only file).
    time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1 - time.monotonic()))
    system.docker("start", valkey)  # restart: unless-stopped leaves a killed container alone
    started_at = time.monotonic()

    probe = f"cluster-valkey-{uuid.uuid4().hex}"
    poll(lambda: publish_probe(system, probe), timeout=LEASE_SECONDS + 60, what="a publish")
    back = time.monotonic() - started_at
    successor = poll(lambda: owner_of(system), what="a replica owning the queue")
    print(
        f"valkey killed: {owner} gave the queue up after {gave_up:.2f} s, Valkey down for"
        f" {started_at - killed_at:.2f} s, publishing {back:.2f} s after its start,"
        f" {successor} owning"
    )
    more_accepted(system, 100, "load after Valkey's restart")
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(f"cluster valkey kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")


def test_a_paused_owner_is_fenced_off_when_it_wakes(cluster: System):
    """The owner frozen (docker pause: every process of it stopped, as by SIGSTOP) past the
    lease: a standby takes over and owns the queue. Woken, the old owner has lost the
    lease: the requests waiting for it are answered as by a standby (its /stats relayed to
    the new owner, its publish put in the inbox for the new owner to sequence) or not at
    all, its late writes are refused (the store's fenced script), it exits and comes back
    as a standby, and nothing it does moves the queue back: no client sees a seq go
    backwards, a message with two seqs or a seq with two messages, the late publish is one
    message, and nothing acknowledged is lost."""
    system = cluster
    owner = bring_back(system)
    container = container_of(system, owner)
    owner_ip = replicas(system)[owner]
    first_n = start_load(system)
    system.docker("pause", container)
    paused_at = time.monotonic()
    late_key = f"cluster-late-{uuid.uuid4().hex}"
    late_body = {"body": {"late": late_key}}
    try:
        successor = another_owner(system, owner)
        gap = time.monotonic() - paused_at
        more_accepted(system, 100, "load on the new owner")
        # What the frozen replica reads first thing when it wakes.
        manage = system.token_for("GET", "/stats")
        late_stats = waiting_request(
            owner_ip, "GET", "/stats", headers={"Authorization": f"Bearer {manage}"}
        )
        late_publish = waiting_request(
            owner_ip,
            "POST",
            "/messages",
            late_body,
            {"Authorization": f"Bearer {system.tokens['publish']}", "Idempotency-Key": late_key},
        )
    finally:
        woken_at = time.time()
        system.docker("unpause", container)
    paused_for = time.monotonic() - paused_at
    (stats_status, late_figures), (published, publish_answer) = (
        answer_to(late_stats),
        answer_to(late_publish),
    )

    poll(  # gunicorn's line for the fresh worker it starts when the old one exits
        lambda: "Booting worker" in container_logs(container, woken_at),
        what=f"{owner} to exit and start a fresh worker",
    )
    poll(
        lambda: (roster_now(system) or {}).get(owner) == "standby",
        what=f"{owner} back as a standby",
    )
    poll(lambda: healthy(system, container), what=f"{owner} healthy again")
    assert owner_of(system) == successor
    fenced = sum("fenced" in line for line in container_logs(container, woken_at).splitlines())
    # Woken, it never answered as the owner: its /stats, if answered, are the new owner's.
    assert stats_status in (None, 503) or (
        stats_status == 200 and late_figures["replica"] == successor
    ), f"{owner}, woken after its lease ran out, answered /stats {stats_status} {late_figures}"
    # Its late publish was taken into the inbox (the new owner gave it its seq), refused,
    # or cut off when it exited: the same publish again is that message, or a new one.
    assert published in (None, 202, 503), (published, publish_answer)
    assert valkey_rows(system, late_key) <= 1
    status, again, headers = system.http.exchange_json(
        "POST",
        f"{system.broker_url}/messages",
        late_body,
        timeout=30,
        token=system.tokens["publish"],
        extra_headers={"Idempotency-Key": late_key},
    )
    assert status == 202, again
    if published == 202:
        assert (again["id"], again["seq"]) == (publish_answer["id"], publish_answer["seq"])
        assert headers.get("idempotent-replayed") == "true"
    more_accepted(system, 50, "load after the old owner woke")

    stats, ids = assert_every_message_once_in_order(system, first_n)
    callbacks = [sub["callback"] for sub in system.subscriptions()]
    for callback in callbacks:
        poll(
            lambda callback=callback: again["id"] in {m["id"] for m in system.received(callback)},
            what="the late message at every client",
        )
        late = {
            (m["id"], m["seq"])
            for m in system.received(callback)
            if isinstance(m["body"], dict) and m["body"].get("late") == late_key
        }
        assert late == {(again["id"], again["seq"])}, late
    assert valkey_rows(system, late_key) == 1
    print(
        f"paused owner: {owner} paused {paused_for:.2f} s, {successor} owning after"
        f" {gap:.2f} s; woken, it answered /stats {stats_status}"
        f" ({(late_figures or {}).get('replica') if stats_status == 200 else '-'})"
        f" and a publish {published} (seq {(publish_answer or {}).get('seq', '-')},"
        f" sent again: seq {again['seq']}), {fenced} log line(s) about fenced writes,"
        " and exited"
    )
    print(f"cluster pause test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")


def test_scaling_the_replicas_up_and_down_under_load_loses_nothing(cluster: System):
    """1 -> 3 -> 1 replicas under load (compose --scale, which keeps the lowest-numbered
    replicas when it scales down). The replicas added join as standbys, take publishes and
    the load balancer finds them through Docker's DNS: with three, the owner is restarted
    (it hands over) so that one of the new ones owns the queue; scaling back to one removes
    that one (SIGTERM: it hands over again). Publishing goes on throughout, nothing lost or
    published twice."""
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
    successor = another_owner(system, first)
    assert successor in added
    assert bring_back(system, 3) == successor  # the restarted one is back, as a standby
    steps.append(lineup(successor))
    more_accepted(system, 100, "load with three replicas")

    last = bring_back(system, 1)
    assert successor not in replicas(system), "compose kept the owner: no handover to test"
    steps.append(lineup(last))
    more_accepted(system, 100, "load with one replica again")
    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(f"scaled 3 -> 1 -> 3 -> 1, the replicas (*owner): {' -> '.join(steps)}")
    print(f"cluster scale test: sent {stats['sent'] - first_n}, {figures(stats, ids)}")
