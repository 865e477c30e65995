"""Load generators: wrk (Debian's `wrk` package) for closed-loop throughput, greenlets on
geventhttpclient when an exact number of requests matters (or wrk is not installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from itertools import count
from pathlib import Path
from typing import Any

import gevent

from bench.common import BENCH, BODY, die_with_parent
from groker_common.http import JSON_HEADERS, HttpPool

WRK = shutil.which("wrk")
CONNECTIONS = 32


def tool() -> str:
    if WRK:
        version = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout
        return f"wrk {version.split()[1]}, 1 thread, {CONNECTIONS} connections, Lua JSON POST"
    return f"gevent + geventhttpclient, {CONNECTIONS} greenlets (wrk not installed)"


def publish_body(mode: str = "async") -> bytes:
    return json.dumps({"body": BODY, "mode": mode}).encode()


def batch_body(size: int, mode: str = "async") -> bytes:
    """A POST /messages/batch body: `size` messages of the benchmarks' body."""
    return json.dumps({"messages": [{"body": BODY}] * size, "mode": mode}).encode()


def hammer(
    url: str,
    seconds: int,
    token: str | None = None,
    keyed: bool = False,
    body: bytes | None = None,
    connections: int = CONNECTIONS,
) -> dict[str, Any]:
    """POST `body` (publish_body() by default) to url for `seconds` from `connections`
    keep-alive connections (`keyed`: each with an Idempotency-Key of its own). Returns
    requests, duration_s, rate, non_2xx, socket_errors, p50_ms, p99_ms."""
    prefix = uuid.uuid4().hex if keyed else ""
    body = body or publish_body()
    if WRK:
        result = _wrk(url, seconds, token, prefix, body, connections)
    else:
        result = _greenlets(url, seconds, token, prefix, body, connections)
    result["rate"] = result["requests"] / result["duration_s"]
    return result


def blast(url: str, n: int, connections: int = CONNECTIONS) -> float:
    """Publish about n async messages as fast as the broker takes them; returns seconds.
    With wrk, which stops where the n-th request is made, one or a few more or fewer may
    reach the broker (count what it took from its stats): a load tool in C leaves the
    brokers more of a machine it shares with them than greenlets do. Without wrk, exactly
    n (publish_n)."""
    if not WRK:
        return publish_n(url, n, concurrency=connections)
    began = time.monotonic()
    result = _wrk(f"{url}/messages", 600, None, "", publish_body(), min(connections, n), n)
    if result["non_2xx"]:
        raise RuntimeError(f"{result['non_2xx']} publishes to {url} not accepted")
    return time.monotonic() - began


def _wrk(
    url: str, seconds: int, token: str | None, key_prefix: str, payload: bytes, connections: int,
    requests: int = 0,
) -> dict[str, Any]:  # fmt: skip
    assert WRK is not None
    with tempfile.TemporaryDirectory() as scratch:
        body, stopped = Path(scratch, "body.json"), Path(scratch, "stopped")
        body.write_bytes(payload)
        env = {**os.environ, "BENCH_BODY_FILE": str(body), "BENCH_TOKEN": token or "",
               "BENCH_KEY_PREFIX": key_prefix, "BENCH_REQUESTS": str(requests),
               "BENCH_STOPPED": str(stopped)}  # fmt: skip
        argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
        argv += ["-s", str(BENCH / "wrk_post.lua"), url]
        # Polled, not waited on, so that the /stats sampler greenlet runs meanwhile (wrk's
        # few lines of output fit in the pipe).
        wrk = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + seconds + 60
        while wrk.poll() is None and time.monotonic() < deadline:
            if stopped.exists():  # its thread is done: its summary now, not at its duration
                wrk.send_signal(signal.SIGINT)
            gevent.sleep(0.1)
        if wrk.poll() is None:
            wrk.kill()
        stdout, stderr = wrk.communicate()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {stderr[-1000:]}")
    line = next(ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON "))
    return json.loads(line.removeprefix("WRK_JSON "))


def _greenlets(
    url: str, seconds: int, token: str | None, key_prefix: str, body: bytes, connections: int
) -> dict[str, Any]:
    pool = HttpPool(concurrency=connections)
    headers = _headers(token)
    latencies: list[float] = []
    counts = {"non_2xx": 0, "socket_errors": 0}
    deadline = time.monotonic() + seconds
    numbers = count()

    def loop() -> None:
        while (began := time.monotonic()) < deadline:
            sent = headers
            if key_prefix:
                sent = headers | {"Idempotency-Key": f"{key_prefix}-{next(numbers)}"}
            try:
                status, _ = pool.request("POST", url, body, sent, timeout=10)
            except Exception:
                counts["socket_errors"] += 1
                continue
            latencies.append(time.monotonic() - began)
            counts["non_2xx"] += not 200 <= status < 300

    began = time.monotonic()
    gevent.joinall([gevent.spawn(loop) for _ in range(connections)])
    duration = time.monotonic() - began
    pool.close()
    latencies.sort()
    at = (lambda p: latencies[int(p * (len(latencies) - 1))] * 1000) if latencies else None
    return {"requests": len(latencies), "duration_s": duration, **counts,
            "p50_ms": at and at(0.5), "p99_ms": at and at(0.99)}  # fmt: skip


def _headers(token: str | None) -> dict[str, str]:
    return JSON_HEADERS | {"Authorization": f"Bearer {token}"} if token else JSON_HEADERS


def publish_batches(url: str, n: int, size: int = 100, concurrency: int = 4) -> float:
    """Publish exactly n async messages in batches of `size` (POST /messages/batch), so that
    publishing is no bottleneck; returns seconds."""
    pool = HttpPool(concurrency=concurrency)
    sizes = [min(size, n - i) for i in range(0, n, size)]

    def loop() -> None:
        while sizes:
            body = batch_body(sizes.pop())
            status, raw = pool.request("POST", f"{url}/messages/batch", body, JSON_HEADERS, 30)
            if status != 202:
                raise RuntimeError(f"batch publish answered {status}: {raw[:200]!r}")

    began = time.monotonic()
    gevent.joinall([gevent.spawn(loop) for _ in range(concurrency)], raise_error=True)
    pool.close()
    return time.monotonic() - began


def publish_n(url: str, n: int, token: str | None = None, concurrency: int = CONNECTIONS) -> float:
    """Publish exactly n async messages as fast as the broker takes them; returns seconds.
    Fails on any answer but 202: a rejected message would skew every count after it."""
    pool = HttpPool(concurrency=concurrency)
    headers = _headers(token)
    body = publish_body()
    left = [n]

    def loop() -> None:
        while left[0] > 0:
            left[0] -= 1
            status, raw = pool.request("POST", f"{url}/messages", body, headers, timeout=30)
            if status != 202:
                raise RuntimeError(f"publish answered {status}: {raw[:200]!r}")

    began = time.monotonic()
    greenlets = [gevent.spawn(loop) for _ in range(min(concurrency, n))]
    gevent.joinall(greenlets, raise_error=True)
    pool.close()
    return time.monotonic() - began
