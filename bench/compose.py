"""compose: the accept and fan-out figures through the compose deployment (SQLite store,
tokens, docker networking), against the same benchmarks run natively (ratio docker/native).

The deployment is a project of its own (`groker-bench`: own containers, volumes, network
172.29.0.0/24, host ports 18000/18001, image tags from bench/compose.bench.yml), so a
`groker` project someone runs on the same machine is never touched. Its load generator is
paused and no client runs; the sinks run on the host, bound to the network's gateway
address, which the broker may call because it is inside its allowed network."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from bench import accept, fanout
from bench.common import BENCH, PYTHON, ROOT, broker, call, sinks, subscribe_all, wait_http

PROJECT = "groker-bench"
BROKER = "http://127.0.0.1:18000"
SERVER = "http://127.0.0.1:18001"
GATEWAY = "172.29.0.1"
ENV = {
    "GROKER_BROKER_PORT": "18000",
    "GROKER_SERVER_PORT": "18001",
    "GROKER_SUBNET": "172.29.0.0/24",
    "GROKER_GATEWAY": GATEWAY,
    # compose's default allows 172.28.0.0/24; callbacks here are in our own subnet.
    "GROKER_ALLOWED_NETWORKS": "172.29.0.0/24",
    "GROKER_MAX_QUEUE_LENGTH": "1000000",
    "GROKER_LOG_LEVEL": "WARNING",
    "GROKER_RATE": "0",
    # The same base image the deployment builds from (compose.yml's own default otherwise).
    "PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", "python:3.11-slim-bookworm"),
    "COMPOSE_BAKE": "false",
}


# The same pure-Python loop in both interpreters: the images' Python and this venv's may be
# built differently (here: Debian's optimized build against pyenv's plain one), which moves
# the docker/native ratio as much as docker does.
LOOP = """
import time
def once():
    began, total = time.perf_counter(), 0
    for i in range(2_000_000):
        total += i * 2 % 7
    return time.perf_counter() - began
print(min(once() for _ in range(3)))
"""


def compose(*args: str, timeout: float = 120) -> str:
    files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(BENCH / "compose.bench.yml")]
    done = subprocess.run(
        ["docker", "compose", "-p", PROJECT, *files, *args],
        cwd=ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"docker compose {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if shutil.which("docker") is None:
        return "docker not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "docker daemon not answering"
    for port in (18000, 18001):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"port {port} is in use"
    return None


def native(results: dict[str, Any], short: bool) -> dict[str, Any]:
    """The native SQLite figures of this run, measuring them now if they were not."""
    got = results.get("accept", {}).get("sqlite", {}).get("rate")
    points = {p["subscribers"]: p["sqlite"]["rate"] for p in results.get("fanout", {}).get(
        "points", []) if "sqlite" in p}  # fmt: skip
    seconds, warmup = accept.durations(short)
    with sinks(max(fanout.SUBSCRIBERS)) as callbacks:
        if got is None:
            with broker("sqlite") as (url, _):
                subscribe_all(url, callbacks[:1])
                got = accept.measure(url, seconds, warmup)["rate"]
        for n in fanout.SUBSCRIBERS:
            if n not in points:
                with broker("sqlite") as (url, _):
                    m = fanout.messages(fanout.deliveries(short), n)
                    points[n] = fanout.broker_rate(url, callbacks[:n], m)["rate"]
    return {"accept": got, "fanout": points}


def run(short: bool, results: dict[str, Any]) -> dict[str, Any]:
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    seconds, warmup = accept.durations(short)
    out: dict[str, Any] = {"project": PROJECT, "store": "sqlite", "seconds": seconds}
    compose("down", "-v", "--remove-orphans")  # what a killed earlier run may have left
    began = time.monotonic()
    try:
        compose("up", "-d", "--build", "--wait", "--scale", "client=0", timeout=600)
        out["up_s"] = round(time.monotonic() - began, 1)
        read = ("exec", "-T", "broker", "cat")
        publish = compose(*read, "/secrets/GROKER_PUBLISH_TOKEN").strip()
        manage = compose(*read, "/secrets/GROKER_MANAGE_TOKEN").strip()
        call("PUT", f"{SERVER}/rate", {"rate": 0})  # the load generator stays quiet
        wait_http(f"{BROKER}/readyz", 60)
        native_loop = subprocess.run([PYTHON, "-c", LOOP], capture_output=True, text=True)
        out["python_loop_s"] = {
            "native": round(float(native_loop.stdout), 3),
            "container": round(float(compose("exec", "-T", "broker", "python", "-c", LOOP)), 3),
        }
        with sinks(max(fanout.SUBSCRIBERS), host=GATEWAY) as callbacks:
            subscribe_all(BROKER, callbacks[:1], manage)
            out["accept"] = accept.measure(BROKER, seconds, warmup, token=publish)
            out["fanout"] = []
            # Subscribers accumulate (1, then 10, then 50): each point counts its own.
            for n in fanout.SUBSCRIBERS:
                m = fanout.messages(fanout.deliveries(short), n)
                point = fanout.broker_rate(BROKER, callbacks[:n], m, publish, manage)
                out["fanout"].append(point)
                accept.wait_drained(BROKER, 120)
    finally:
        compose("down", "-v", "--remove-orphans", timeout=180)
    out["native"] = native(results, short)
    return out
