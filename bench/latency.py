"""latency: sync publish p50/p99 with 3 subscribers at 100 and 1,000 msg/s offered load,
against a direct POST round-trip to one subscriber with the same client library.

Open loop: request i is due at start + i/rate and gets its own greenlet then, whether or
not earlier ones have answered, and its latency is counted from when it was due, so a
stalled server cannot hide its stall by slowing the sender (coordinated omission)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool

from bench import load
from bench.common import broker, call, percentile, sinks, subscribe_all
from bench.fanout import payloads
from groker_common.http import JSON_HEADERS, HttpPool

RATES = (100, 1000)
BATCHED = 100  # max_batch of the subscribers in the batched point
SYNC_BATCH = 10  # messages per sync POST /messages/batch in the batch publish point
SUBSCRIBERS = 3


def paced(
    rate: float, seconds: float, send: Callable[[int], bool], keep: list[float] | None = None
) -> dict[str, Any]:
    """Call send(i) at `rate` per second for `seconds`; send returns True on success.
    `keep`: every latency (ms) is also appended to it, for a caller that takes percentiles
    over several runs."""
    count = int(rate * seconds)
    latencies: list[float] = []
    ends = [0.0]
    group = gevent.pool.Group()

    def one(i: int, due: float) -> None:
        try:
            ok = send(i)
        except Exception:
            ok = False
        now = time.monotonic()
        if ok:
            latencies.append(now - due)
            ends[0] = max(ends[0], now)

    start = time.monotonic() + 0.05
    for i in range(count):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        group.spawn(one, i, due)
    group.join(timeout=60)
    ms = [x * 1000 for x in latencies]
    if keep is not None:
        keep.extend(ms)
    return {
        "offered": rate,
        "achieved": round(len(latencies) / (ends[0] - start), 1) if latencies else 0.0,
        "sent": count,
        "failed": count - len(latencies),  # errors, and any still unanswered after 60 s
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else None,
    }


def sync_publish(pool: HttpPool, url: str, batch: int = 0) -> Callable[[int], bool]:
    """send(i) for `paced`: one sync publish to the broker at `url` (with `batch`, a sync
    POST /messages/batch of that many); True once published."""
    if batch:
        path, body = "/messages/batch", load.batch_body(batch, "sync")
    else:
        path, body = "/messages", load.publish_body("sync")

    def send(_i: int) -> bool:
        return pool.request("POST", f"{url}{path}", body, JSON_HEADERS, 30)[0] == 200

    return send


def run(short: bool) -> dict[str, Any]:
    seconds = 2 if short else 10
    out: dict[str, Any] = {"subscribers": SUBSCRIBERS, "seconds": seconds, "points": []}
    # Enough connections that the pool never queues a due request behind another.
    pool = HttpPool(concurrency=1024)
    with sinks(SUBSCRIBERS) as callbacks, broker("memory") as (url, _):
        subscribe_all(url, callbacks)
        batch = payloads(int(max(RATES) * seconds))
        publish = sync_publish(pool, url)

        def direct(i: int) -> bool:
            payload, headers = batch[i]
            return pool.request("POST", callbacks[0], payload, headers, 30)[0] == 200

        paced(100, 1, publish)  # warm both paths up: connections, code paths
        paced(100, 1, direct)
        for rate in RATES:
            point = {
                "broker": paced(rate, seconds, publish),
                "direct": paced(rate, seconds, direct),
            }
            out["points"].append({"rate": rate, **point})
        # The same subscribers taking batches (max_batch 100) from a broker of their own:
        # at the highest rate, against the same direct round trips.
        with broker("memory") as (batching_url, _):
            for callback in callbacks:
                call("POST", f"{batching_url}/subscriptions",
                     {"callback": callback, "max_batch": BATCHED})  # fmt: skip
            publish_batching = sync_publish(pool, batching_url)
            paced(100, 1, publish_batching)
            rate = max(RATES)
            out["batched"] = {
                "rate": rate,
                "max_batch": BATCHED,
                "broker": paced(rate, seconds, publish_batching),
                "direct": out["points"][-1]["direct"],
            }
            # The same messages a second, published SYNC_BATCH to a request: each request
            # answered once all its messages are published.
            publish_batches = sync_publish(pool, batching_url, SYNC_BATCH)
            paced(10, 1, publish_batches)
            out["sync_batches"] = {
                "rate": rate,
                "batch": SYNC_BATCH,
                "max_batch": BATCHED,
                "broker": paced(rate / SYNC_BATCH, seconds, publish_batches),
                "direct": out["points"][-1]["direct"],
            }
    pool.close()
    return out
