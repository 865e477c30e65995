"""Cluster mode over replicated Valkey (docker-compose.ha.yml): a primary, two replicas and
three Sentinels under the two broker replicas. The primary is killed under load: the
Sentinels promote a replica, the owner's next write fails so it hands the queue over, the
next owner reads it back from the new primary, and since every write was answered only
once a replica had it on disk (WAITAOF 1 1), nothing acknowledged is lost: every message
reaches every client once, in seq order. A deployment of its own (project, ports, network)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from groker_common.testing import poll

from .conftest import System
from .test_cluster import (
    assert_every_message_once_in_order,
    deployment,
    figures,
    more_accepted,
    publish_probe,
    start_load,
)

FILES = ["docker-compose.cluster.yml", "docker-compose.ha.yml"]
SENTINEL = ("exec", "-T", "sentinel-1", "valkey-cli", "-p", "26379")
# What the issue asks of a failover: publishing again within this many seconds.
RESUMES_WITHIN = 10.0


@pytest.fixture(scope="module")
def ha(request: pytest.FixtureRequest) -> Iterator[System]:
    with deployment(request, "groker-ha", FILES, 8300, "172.27.0", brokers=2) as system:
        yield system


def primary(system: System) -> str:
    """The Valkey node the Sentinels name as the primary (its service name)."""
    answer = system.compose(*SENTINEL, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "groker")
    return answer.split()[0]


def online_replicas(system: System, node: str) -> int:
    info = system.compose("exec", "-T", node, "valkey-cli", "INFO", "replication")
    return sum(1 for line in info.splitlines() if "state=online" in line)


def test_the_valkey_primary_killed_under_load_loses_nothing_acknowledged(ha: System):
    system = ha
    assert primary(system) == "valkey"
    poll(lambda: online_replicas(system, "valkey") == 2, what="both replicas following")
    first_n = start_load(system)
    more_accepted(system, 100, "load on the replicated store")

    system.compose("kill", "-s", "KILL", "valkey")
    killed_at = time.monotonic()
    probe = f"ha-kill-{uuid.uuid4().hex}"
    poll(lambda: publish_probe(system, probe), timeout=60, what="a publish after the failover")
    gap = time.monotonic() - killed_at
    promoted = primary(system)
    print(f"Valkey failover: primary killed, {promoted} promoted, publishing after {gap:.2f} s")
    assert promoted in {"valkey-2", "valkey-3"}
    assert gap <= RESUMES_WITHIN, f"publishing resumed only after {gap:.1f} s"

    more_accepted(system, 100, "load on the new primary")
    # The old primary comes back, and the Sentinels make it a replica of the new one.
    system.compose("start", "valkey")
    poll(lambda: online_replicas(system, promoted) == 2, timeout=60, what="the old primary back")
    assert primary(system) == promoted
    more_accepted(system, 50, "load with every node back")

    stats, ids = assert_every_message_once_in_order(system, first_n)
    print(
        f"Valkey primary kill test: sent {stats['sent'] - first_n}, {figures(stats, ids)},"
        f" publishing again after {gap:.2f} s"
    )
