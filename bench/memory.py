"""memory: the broker worker's RSS with 100,000 messages queued (no subscriber, so nothing
leaves the queue) minus its RSS before, per message, and that minus the body's size;
against the same count of minimal queue records ((id, seq, body JSON) tuples in a deque)
in a bare Python process, measured the same way. Run as a module it is that baseline:

    python -m bench.memory --baseline 100000      # prints bytes per record
"""

from __future__ import annotations

import argparse
import subprocess
import uuid
from collections import deque
from typing import Any

import gevent

from bench import load
from bench.common import (
    BODY_JSON,
    PYTHON,
    ROOT,
    broker,
    call,
    die_with_parent,
    rss_bytes,
)
from groker_common.testing import worker_pid


def baseline_process(n: int) -> float:
    done = subprocess.run(
        [PYTHON, "-m", "bench.memory", "--baseline", str(n)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=300,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    return float(done.stdout.strip())


def _baseline(n: int) -> float:
    import os

    pid = os.getpid()
    queue: deque[tuple[str, int, str]] = deque()
    before = rss_bytes(pid)
    for seq in range(n):
        # A fresh string per message, as a broker decoding each request would hold.
        queue.append((str(uuid.uuid4()), seq, "".join([BODY_JSON[:1], BODY_JSON[1:]])))
    return (rss_bytes(pid) - before) / len(queue)


def run(short: bool) -> dict[str, Any]:
    n = 10_000 if short else 100_000
    with broker("memory", GROKER_MAX_QUEUE_LENGTH="200000") as (url, proc):
        worker = worker_pid(proc.pid)
        load.publish_n(url, 500)  # warm up: code paths, pools, first allocations
        gevent.sleep(0.5)
        queued_before = call("GET", f"{url}/stats")["queue_length"]
        rss_before = rss_bytes(worker)
        load.publish_n(url, n)
        gevent.sleep(0.5)
        stats = call("GET", f"{url}/stats")
        rss_after = rss_bytes(worker)
    queued = stats["queue_length"] - queued_before
    per_message = (rss_after - rss_before) / queued
    base = baseline_process(n)
    return {
        "messages": queued,
        "body_bytes": len(BODY_JSON),
        "rss_before_mib": round(rss_before / 2**20, 1),
        "rss_after_mib": round(rss_after / 2**20, 1),
        "bytes_per_message": round(per_message),
        "overhead_per_message": round(per_message - len(BODY_JSON)),
        "baseline_bytes_per_message": round(base),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="memory baseline: minimal queue records")
    parser.add_argument("--baseline", type=int, required=True)
    print(_baseline(parser.parse_args().baseline))
