"""fan-out: deliveries/s to N subscribers, against the raw outbound limit of the broker's own
HTTP client (groker_common.http.HttpPool on geventhttpclient, default settings) posting the
same payloads and headers to the same sinks from one gevent process, without the broker.

Broker: subscribe N sinks, publish M messages as fast as it takes them (a subscriber never
gets what was published before it joined, so the queue cannot be preloaded), and time from
the first publish until /stats says delivered == M*N. Raw: a fresh process (`python -m
bench.fanout URL...`), one greenlet per sink posting the M payloads in order, one at a time,
as a broker lane does (not pipelined). It is not monkey-patched: geventhttpclient needs no
patching, and patching costs it ~20% here, so this is the client's best.

Points are short, so the full run measures each three times, interleaved, and keeps the
median."""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import time
import uuid
from typing import Any

import gevent

from bench import load
from bench.common import (
    BODY,
    PYTHON,
    ROOT,
    broker,
    call,
    die_with_parent,
    sinks,
    subscribe_all,
    wait_stats,
)
from groker_common.http import HttpPool
from groker_common.signatures import new_secret, sign

SUBSCRIBERS = (1, 10, 50)
# Batch delivery: N subscribers taking up to MAX_BATCH messages per POST, against the same
# N taking one per POST, both fed by batch publishes so that publishing keeps ahead.
BATCHED_SUBSCRIBERS, MAX_BATCH = 10, 100
SINK_PROCESSES = 2


def deliveries(short: bool) -> int:
    """About how many deliveries each point makes (M = this / N)."""
    return 3000 if short else 12000


def messages(total: int, n: int) -> int:
    """M for N subscribers: about the same number of deliveries at every N."""
    return max(total // n, 100)


def broker_rate(
    url: str,
    callbacks: list[str],
    m: int,
    publish: str | None = None,
    manage: str | None = None,
    meter: contextlib.AbstractContextManager[dict[str, Any]] | None = None,
) -> dict:
    """Subscribe the callbacks (those already subscribed stay), publish m messages, and
    time until all m*N are delivered. publish/manage: the bearer tokens, if any. `meter`
    (common.cpu_used, say) runs over that time; what it yields is reported as `cost`."""
    subscribe_all(url, callbacks, manage)
    before = call("GET", f"{url}/stats")
    if before["subscribers"] != len(callbacks):
        raise RuntimeError(f"{before['subscribers']} subscribers, expected {len(callbacks)}")
    with meter or contextlib.nullcontext({}) as used:
        began = time.monotonic()
        publish_s = load.publish_n(url, m, publish)
        published = call("GET", f"{url}/stats")
        target = before["delivered"] + m * len(callbacks)
        reached, after = wait_stats(url, "delivered", target, timeout=300)
    elapsed = reached - began
    # Deliveries/s once publishing stopped: delivery alone, without accept competing.
    tail = after["delivered"] - published["delivered"]
    tail_s = reached - began - publish_s
    return {
        **({"cost": used} if meter else {}),
        "subscribers": len(callbacks),
        "messages": m,
        "deliveries": m * len(callbacks),
        "seconds": round(elapsed, 3),
        "publish_s": round(publish_s, 3),
        "rate": m * len(callbacks) / elapsed,
        "tail_rate": tail / tail_s if tail > len(callbacks) * 20 and tail_s > 0 else None,
        "failed": after["failed"] - before["failed"],
    }


def batched_point(short: bool) -> dict[str, Any]:
    """Deliveries/s to BATCHED_SUBSCRIBERS subscribers with max_batch 1 and MAX_BATCH."""
    n, m = BATCHED_SUBSCRIBERS, 2000 if short else 6000
    out: dict[str, Any] = {"subscribers": n, "messages": m, "max_batch": MAX_BATCH}
    with sinks(n, SINK_PROCESSES) as callbacks:
        for label, most in (("single", 1), ("batched", MAX_BATCH)):
            with broker("sqlite") as (url, _):
                for callback in callbacks:
                    call("POST", f"{url}/subscriptions", {"callback": callback, "max_batch": most})
                began = time.monotonic()
                publish_s = load.publish_batches(url, m)
                reached, after = wait_stats(url, "delivered", m * n, timeout=300)
                out[label] = {
                    "rate": m * n / (reached - began),
                    "seconds": round(reached - began, 3),
                    "publish_s": round(publish_s, 3),
                    "failed": after["failed"],
                }
    return out


def payloads(m: int) -> list[tuple[bytes, dict[str, str]]]:
    """What a lane sends: the broker's envelope around the body, and the delivery headers
    with a Standard Webhooks signature (made here, before timing: raw means transport)."""
    secret, out = new_secret(), []
    for seq in range(1, m + 1):
        message_id = str(uuid.uuid4())
        envelope = {"id": message_id, "seq": seq, "headers": {}, "published_at": time.time()}
        body = json.dumps({**envelope, "body": BODY}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "groker"}
        out.append((body, headers | sign(secret, message_id, body)))
    return out


def _raw(callbacks: list[str], m: int) -> dict[str, Any]:
    """In the raw process: every callback gets the m payloads in order."""
    pool = HttpPool()  # the broker's settings: 8 connections per origin
    batch = payloads(m)

    def lane(url: str) -> None:
        for body, headers in batch:
            # The broker's per-attempt timeout (5 s over 3 attempts): the same pool key.
            status, _ = pool.request("POST", url, body, headers, timeout=5.0 / 3)
            if status != 200:
                raise RuntimeError(f"sink answered {status}")

    began = time.monotonic()
    gevent.joinall([gevent.spawn(lane, url) for url in callbacks], raise_error=True)
    elapsed = time.monotonic() - began
    pool.close()
    n = len(callbacks)
    return {"subscribers": n, "messages": m, "deliveries": m * n, "seconds": round(elapsed, 3),
            "rate": m * n / elapsed}  # fmt: skip


def raw_rate(callbacks: list[str], m: int) -> dict[str, Any]:
    argv = [PYTHON, "-m", "bench.fanout", "--messages", str(m), *callbacks]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=die_with_parent
    )
    if done.returncode != 0:
        raise RuntimeError(f"raw client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The median sample by rate, with every sample's rate kept beside it."""
    chosen = dict(sorted(samples, key=lambda s: s["rate"])[len(samples) // 2])
    chosen["samples"] = [round(s["rate"]) for s in samples]
    chosen["spread"] = round((max(chosen["samples"]) - min(chosen["samples"])) / chosen["rate"], 3)
    return chosen


def run(short: bool, stores: tuple[str, ...] = ("memory", "sqlite")) -> dict[str, Any]:
    repeats = 1 if short else 3
    out: dict[str, Any] = {"sink_processes": SINK_PROCESSES, "repeats": repeats, "points": []}
    with sinks(max(SUBSCRIBERS), SINK_PROCESSES) as callbacks:
        for n in SUBSCRIBERS:
            m = messages(deliveries(short), n)
            got: dict[str, list[dict[str, Any]]] = {"raw": [], **{s: [] for s in stores}}
            for _ in range(repeats):
                got["raw"].append(raw_rate(callbacks[:n], m))
                for store in stores:
                    with broker(store) as (url, _):
                        got[store].append(broker_rate(url, callbacks[:n], m))
            point = {name: median(samples) for name, samples in got.items()}
            out["points"].append({"subscribers": n, "messages": m, **point})
    out["batched"] = batched_point(short)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the raw client: POST m payloads to each URL")
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("callbacks", nargs="+")
    args = parser.parse_args()
    print(json.dumps(_raw(args.callbacks, args.messages)))
