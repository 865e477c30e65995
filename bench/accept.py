"""accept: async publishes/s the broker takes, with one fast sink subscribed, against a bare
Flask POST route under the same gunicorn settings. The accept rate only counts if the
broker also keeps up delivering: /stats is sampled throughout, and the queue's length at
the end, its peak and how long it then takes to drain are reported with it."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import gevent

from bench import load
from bench.common import (
    BENCH,
    broker,
    call,
    gunicorn,
    running,
    sinks,
    subscribe_all,
)

BATCH = 100  # messages per request in the batch run
DELIVERY_BATCH = 100  # max_batch of the subscriber in the batch delivery run


def baseline(seconds: int, warmup: int) -> dict[str, Any]:
    conf = BENCH / "gunicorn_baseline.conf.py"
    app = "bench.baseline_app:app"
    with running(gunicorn("baseline-flask", app, conf, BENCH.parent)) as proc:
        url = f"http://127.0.0.1:{proc.port}/messages"
        load.hammer(url, warmup)
        return load.hammer(url, seconds)


def measure(
    url: str,
    seconds: int,
    warmup: int,
    token: str | None = None,
    keyed: bool = False,
    meter: contextlib.AbstractContextManager[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hammer a broker that already has its subscriber; the queue must drain after.
    `meter` (common.cpu_used, say) runs from the first measured request until the queue
    drained, so that every message accepted meanwhile is counted with all it cost (stored,
    published, delivered) and nothing else is; what it yields is reported as `cost`."""
    load.hammer(f"{url}/messages", warmup, token, keyed)
    wait_drained(url, 60)
    before = call("GET", f"{url}/stats")
    peak = [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], call("GET", f"{url}/stats")["queue_length"])
            gevent.sleep(0.25)

    with meter or contextlib.nullcontext({}) as used:
        sampler = gevent.spawn(sample)
        try:
            result = load.hammer(f"{url}/messages", seconds, token, keyed)
        finally:
            sampler.kill()
        after = call("GET", f"{url}/stats")
        drain_s = wait_drained(url, 120)
    accepted = after["accepted"] - before["accepted"]
    return {
        **({"cost": used} if meter else {}),
        **result,
        "rate": accepted / result["duration_s"],  # what the broker took, not what wrk sent
        "accepted": accepted,
        "replayed": after["replayed"] - before["replayed"],
        "delivered_rate": (after["delivered"] - before["delivered"]) / result["duration_s"],
        "queue_end": after["queue_length"],
        "queue_peak": max(peak[0], after["queue_length"]),
        "drain_s": drain_s,
    }


def wait_drained(url: str, timeout: float) -> float:
    """Seconds until nothing is left unpublished (queue and lanes)."""
    began = time.monotonic()
    while call("GET", f"{url}/stats")["unpublished"] > 0:
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"queue not drained after {timeout}s")
        gevent.sleep(0.05)
    return round(time.monotonic() - began, 2)


def durations(short: bool) -> tuple[int, int]:
    """Seconds measured, and seconds of warm-up before."""
    return (3, 1) if short else (10, 2)


def run(short: bool) -> dict[str, Any]:
    seconds, warmup = durations(short)
    out: dict[str, Any] = {"tool": load.tool(), "seconds": seconds}
    out["baseline"] = baseline(seconds, warmup)
    with sinks(1) as (callback,):
        for store in ("memory", "sqlite"):
            with broker(store) as (url, _):
                subscribe_all(url, [callback])
                out[store] = measure(url, seconds, warmup)
                if store == "sqlite":
                    # What a stored Idempotency-Key costs, against the run just above.
                    out["sqlite_keyed"] = measure(url, seconds, warmup, keyed=True)
        # The subscriber taking batches: an accept no longer pays for a delivery of its own
        # (the memory store, as the run above that it is compared with).
        with broker("memory") as (url, _):
            subscription = {"callback": callback, "max_batch": DELIVERY_BATCH}
            call("POST", f"{url}/subscriptions", subscription)
            out["batch_delivery"] = measure(url, seconds, warmup)
            out["batch_delivery"]["max_batch"] = DELIVERY_BATCH
    # Accepting alone, one message per request against BATCH: no subscriber, so neither
    # flow control (which paces publishers to the deliveries) nor deliveries share the core,
    # and a queue bound the run cannot reach.
    unbounded = {"GROKER_MAX_QUEUE_LENGTH": "100000000", "GROKER_MAX_QUEUE_BYTES": str(16 << 30)}
    with broker("sqlite", **unbounded) as (url, _):
        out["alone"] = accepting(url, seconds, warmup, "/messages", load.publish_body())
        out["alone_batch"] = accepting(
            url, seconds, warmup, "/messages/batch", load.batch_body(BATCH)
        )
        out["alone_batch"]["batch"] = BATCH
    return out


def accepting(url: str, seconds: int, warmup: int, path: str, body: bytes) -> dict[str, Any]:
    """Messages accepted per second, hammering `path` with `body` (nobody subscribed)."""
    load.hammer(f"{url}{path}", warmup, body=body)
    before = call("GET", f"{url}/stats")["accepted"]
    result = load.hammer(f"{url}{path}", seconds, body=body)
    accepted = call("GET", f"{url}/stats")["accepted"] - before
    return {**result, "accepted": accepted, "rate": accepted / result["duration_s"]}
