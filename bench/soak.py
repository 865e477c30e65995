"""Soak test: run the compose deployment at a given rate for a given time, then report
accepted, published, delivered, lost (must be 0) and the broker's memory at start and end.

    python bench/soak.py --seconds 300 --rate 100          # brings compose up and down
    python bench/soak.py --seconds 10 --rate 50 --no-manage   # against a running deployment

Prints a table and one JSON line; exits 1 if any accepted message was lost."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


TOKEN: str | None = None  # the publish token, for GET /messages/<id>


def call(method: str, url: str, payload: Any = None, timeout: float = 10) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if TOKEN:
        headers["Authorization"] = f"Bearer {TOKEN}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as failed:
        return json.load(failed)


def compose(*args: str) -> str:
    return subprocess.run(
        ["docker", "compose", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def broker_memory_mib() -> float | None:
    """Resident memory of the broker's container, from docker stats."""
    try:
        container = compose("ps", "-q", "broker").strip()
        usage = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container],
            check=True, capture_output=True, text=True,
        ).stdout.split("/")[0].strip()  # fmt: skip
    except (subprocess.CalledProcessError, OSError):
        return None
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "B": 1 / 2**20}
    for unit, factor in units.items():
        if usage.endswith(unit):
            return round(float(usage[: -len(unit)]) * factor, 1)
    return None


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def soak(broker: str, server: str, seconds: float, rate: float, sync_ratio: float) -> dict:
    start_stats = call("GET", f"{broker}/stats")
    memory_start = broker_memory_mib()
    previous = call("GET", f"{server}/stats")
    call("PUT", f"{server}/rate", {"rate": rate, "sync_ratio": sync_ratio})
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(min(5.0, seconds - elapsed))
            now = call("GET", f"{broker}/stats")
            print(
                f"  {time.monotonic() - began:6.1f}s accepted {now['accepted']:>8}"
                f" queue {now['queue_length']:>6} subscribers {now['subscribers']}",
                file=sys.stderr,
            )
    finally:
        restore = {"rate": previous["rate"], "sync_ratio": previous["sync_ratio"]}
        call("PUT", f"{server}/rate", restore)
    # Everything accepted during the soak must now be published: give the last ones time.
    ids_answer = call("GET", f"{server}/stats?ids=1")
    soaked = ids_answer["accepted"] - previous["accepted"]
    accepted = ids_answer["accepted_ids"][-soaked:] if soaked else []
    pending = set(ids_answer["pending_ids"]) & set(accepted)
    wait_for(lambda: not (pending & set(call("GET", f"{server}/stats?ids=1")["pending_ids"])), 60)
    # Published: the load generator was told so (sync answer, notification, or polling), and
    # the broker agrees for every message it still keeps (older ones are pruned: 404).
    unconfirmed = pending & set(call("GET", f"{server}/stats?ids=1")["pending_ids"])
    checked, still_queued = 0, set()
    for mid in accepted:
        status = call("GET", f"{broker}/messages/{mid}").get("status")
        checked += status == "published"
        if status == "queued":
            still_queued.add(mid)
    lost = unconfirmed | still_queued
    end_stats = call("GET", f"{broker}/stats")
    return {
        "seconds": seconds,
        "rate": rate,
        "accepted": len(accepted),
        "published": len(accepted) - len(lost),
        "checked_at_broker": checked,
        "lost": len(lost),
        "delivered": end_stats["delivered"] - start_stats["delivered"],
        "subscribers": end_stats["subscribers"],
        "broker_memory_mib_start": memory_start,
        "broker_memory_mib_end": broker_memory_mib(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=100, help="messages per second")
    parser.add_argument("--sync-ratio", type=float, default=0.2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument(
        "--no-manage", action="store_true", help="use the deployment that is already up"
    )
    args = parser.parse_args()
    broker = os.environ.get("GROKER_E2E_BROKER_URL", "http://localhost:8000")
    server = os.environ.get("GROKER_E2E_SERVER_URL", "http://localhost:8001")
    if not args.no_manage:
        # Keep every soaked message for GET /messages/<id>, so the broker can confirm each.
        os.environ.setdefault("GROKER_RETENTION_COUNT", str(int(args.seconds * args.rate * 2)))
        compose("up", "-d", "--build", "--wait", "--scale", f"client={args.clients}")
    global TOKEN
    TOKEN = os.environ.get("GROKER_E2E_PUBLISH_TOKEN") or compose(
        "exec", "-T", "broker", "cat", "/secrets/GROKER_PUBLISH_TOKEN"
    )
    try:
        wait_for(lambda: call("GET", f"{broker}/readyz").get("status") == "ready", 60)
        result = soak(broker, server, args.seconds, args.rate, args.sync_ratio)
    finally:
        if not args.no_manage:
            compose("down", "-v")
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))
    return 1 if result["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
