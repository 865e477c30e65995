"""A real full disk: the broker's data directory on a tiny tmpfs (tests/e2e/full-disk.yml),
filled until its commits fail. What it refuses (503) is never delivered, what it accepted
is, in order, and publishing resumes once there is room again. A deployment of its own (its
own project, ports and network), since its store does not survive it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from groker_common.testing import poll

from .conftest import ROOT, System

PAD = "x" * 20_000  # each message adds ~20 KB to SQLite's WAL
# Write one file until the tmpfs is full; ENOSPC is the point, not an error. Unbuffered:
# a buffered file would try its unwritten bytes again on close, and fail there.
FILL = """
import errno
with open('/data/filler', 'wb', buffering=0) as filler:
    try:
        while True:
            filler.write(b'\\0' * 65536)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
"""


@pytest.fixture(scope="module")
def small_disk() -> Iterator[System]:
    system = System(manage=True)
    system.broker_url = "http://localhost:8100"
    system.env |= {
        "COMPOSE_PROJECT_NAME": "groker-full-disk",
        "COMPOSE_FILE": f"{ROOT / 'docker-compose.yml'}:{ROOT / 'tests/e2e/full-disk.yml'}",
        "GROKER_BROKER_PORT": "8100",
        "GROKER_SERVER_PORT": "8101",
        "GROKER_SUBNET": "172.30.0.0/24",
        "GROKER_GATEWAY": "172.30.0.1",
        "GROKER_ALLOWED_NETWORKS": "172.30.0.0/24",
    }
    system.compose("down", "-v", "--remove-orphans", timeout=120)
    try:
        system.compose("up", "-d", "--build", "--wait", "--wait-timeout", "180", "client")
        system.wait_ready()
        system.load_tokens()
        poll(lambda: len(system.subscriptions()) == 1, what="the client subscribed")
        yield system
    finally:
        system.compose("down", "-v", "--remove-orphans", timeout=180)
        system.http.close()


def publish(system: System, n: int) -> tuple[int, dict, dict]:
    return system.http.exchange_json(
        "POST",
        f"{system.broker_url}/messages",
        {"body": {"n": n, "pad": PAD}},
        timeout=30,
        token=system.tokens["publish"],
        extra_headers={"Idempotency-Key": f"full-disk-{n}"},
    )


def test_a_full_disk_refuses_with_503_loses_nothing_accepted_and_recovers(small_disk):
    system = small_disk
    accepted: list[tuple[int, str]] = []  # (n, id) in the order the broker accepted them
    for n in range(10):
        status, answer, _ = publish(system, n)
        assert status == 202, answer
        accepted.append((n, answer["id"]))
    system.compose("exec", "-T", "broker", "python", "-c", FILL)
    refused = []
    for n in range(10, 400):
        status, answer, _ = publish(system, n)
        assert status in (202, 503), answer
        if status == 202:
            accepted.append((n, answer["id"]))
        else:
            assert answer["error"] == "store unavailable", answer
            refused.append(n)
            if len(refused) == 5:
                break
    assert len(refused) == 5, "the disk never filled up"
    assert system.stats()["accepted"] == len(accepted)  # the refused ones were not counted
    assert system.broker("GET", "/readyz")[0] == 200  # full, not down

    system.compose("exec", "-T", "broker", "rm", "/data/filler")
    # Refused means nothing was kept, not even the key: the retries are new messages.
    for n in [*refused, 400, 401]:
        status, answer, headers = publish(system, n)
        assert status == 202 and "idempotent-replayed" not in headers, answer
        accepted.append((n, answer["id"]))

    (subscription,) = system.subscriptions()
    last = accepted[-1][1]
    poll(
        lambda: last in {m["id"] for m in system.received(subscription["callback"])},
        what="the last accepted message at the client",
    )
    received = system.received(subscription["callback"])
    assert [(m["body"]["n"], m["id"]) for m in received] == accepted
    assert {system.message(mid)["status"] for _, mid in accepted} == {"published"}
