"""What every benchmark shares: real processes on free loopback ports that are always
stopped (even when the run fails or is interrupted), RSS from /proc, percentiles, and the
message body every benchmark publishes.

The driver (bench.run) is one process whose load clients are greenlets on
geventhttpclient; it is not monkey-patched, so anything that waits must yield to gevent."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import gevent

from groker_common.http import HttpPool
from groker_common.testing import launch_broker

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable

# A ~200-byte JSON body, the same for every benchmark (and the compose one).
BODY: dict[str, Any] = {
    "order": 123456,
    "customer": "c-000042",
    "items": [{"sku": f"sku-{i:04d}", "qty": i, "price": 9.99} for i in range(3)],
    "note": "benchmark payload, about two hundred bytes of JSON",
}
BODY_JSON = json.dumps(BODY, separators=(",", ":"))

# Control calls (stats, subscribe) go through the same pooled client as everything else.
http = HttpPool(concurrency=16)


def free_port() -> int:
    """A port free on every address, below the kernel's ephemeral range (32768+ here), so
    that no outgoing connection (ours, wrk's, anyone's) takes it before our server binds
    it, as happened with bind(0) ports on this busy machine."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port


def call(method: str, url: str, payload: Any = None, token: str | None = None) -> Any:
    """One JSON request; raises unless 2xx (a benchmark must not go on after a failure)."""
    status, data = http.request_json(method, url, payload, timeout=30, token=token)
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {url} -> {status}: {data}")
    return data


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}); see {proc.log}")
        with contextlib.suppress(Exception):
            if http.request("GET", url, timeout=2)[0] == 200:
                return
        gevent.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


# --- processes ----------------------------------------------------------------------

_LIVE: list[Proc] = []
_STARTED = [0]
# Every child's output, kept for when a benchmark fails (replaced on each run).
LOG_DIR = BENCH / "results" / "logs"


def die_with_parent() -> None:
    # PR_SET_PDEATHSIG: even a SIGKILLed driver takes its children down with it.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# How every child is started: in a session of its own, so that stopping it stops all it
# started, and killed with the driver.
CHILD_OPTIONS: dict[str, Any] = {"start_new_session": True, "preexec_fn": die_with_parent}


def spawn(
    argv: Sequence[str], out: IO[bytes], cwd: Path = ROOT, **env: str
) -> subprocess.Popen[bytes]:
    """Start a command as every child is started, `env` over this process's environment
    and its output to `out`."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        **CHILD_OPTIONS,
    )


class Proc:
    """A child in its own process group, stopped with SIGTERM, then SIGKILL to the group;
    its output in LOG_DIR."""

    def __init__(
        self, name: str, start: Callable[[IO[bytes]], subprocess.Popen[bytes]], port: int = 0
    ) -> None:
        """`start` starts the child with its output going to the file it is given."""
        self.name = name
        self.port = port
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        _STARTED[0] += 1
        self.log = LOG_DIR / f"{_STARTED[0]:02d}-{name}.log"
        with open(self.log, "wb") as out:
            self.popen = start(out)
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 10.0) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        # Our idle keep-alive connections would hold gunicorn's graceful stop for its
        # keepalive (5 s); dropping them first makes a stop take ~1 s.
        http.close()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Whatever is left of the group (gunicorn's worker, a stuck child) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


def stop_all() -> None:
    for proc in reversed(list(_LIVE)):
        proc.stop(grace=3)


atexit.register(stop_all)


def _on_signal(signum: int, _frame: object) -> None:
    # SystemExit, whichever greenlet it lands in (gevent passes it from the hub to the main
    # one), unwinds every `finally`: processes stopped, compose taken down.
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def serve(name: str, argv: Sequence[str], ready: str, cwd: Path = ROOT, **env: str) -> Proc:
    """Start a server on a free port (`{port}` in argv and ready URL; also $PORT) and wait
    until `ready` answers 200."""

    def start(port: int, out: IO[bytes]) -> subprocess.Popen[bytes]:
        return spawn([a.format(port=port) for a in argv], out, cwd, PORT=str(port), **env)

    return serve_on_free_port(name, start, ready)


def serve_on_free_port(
    name: str, start: Callable[[int, IO[bytes]], subprocess.Popen[bytes]], ready: str
) -> Proc:
    """Start a server with `start(port, output)` on a free port and wait until `ready`
    (`{port}` in it) answers 200. Should another process take the port first, try another."""
    for attempt in range(3):
        port = free_port()
        proc = Proc(name, functools.partial(start, port), port)
        try:
            wait_http(ready.format(port=port), proc=proc)
            return proc
        except RuntimeError:
            exited = proc.popen.poll() is not None  # before ready: most likely the port
            proc.stop()
            if not exited or attempt == 2:
                raise
    raise AssertionError("unreachable")


def gunicorn(name: str, app: str, config: Path, cwd: Path, **env: str) -> Proc:
    """gunicorn with the given config file (one gevent worker), as the services run it."""
    argv = [PYTHON, "-m", "gunicorn", "-c", str(config), app]
    pythonpath = f"{ROOT / 'libs'}:{cwd}:{ROOT}"
    return serve(name, argv, "http://127.0.0.1:{port}/readyz", cwd, PYTHONPATH=pythonpath, **env)


@contextlib.contextmanager
def broker(store: str = "memory", ready: str = "/readyz", **env: str) -> Iterator[tuple[str, Proc]]:
    """A real broker on a free port, started as the tests start one
    (groker_common.testing.launch_broker: gunicorn + gevent, one worker, quiet, loopback
    callbacks allowed) with room for a benchmark's queue; yields (url, proc) once `ready`
    answers 200 (on a shared Valkey, /readyz is every replica's: /stats answers once one
    owns the queue)."""
    settings = {"GROKER_STORE": store, "GROKER_MAX_QUEUE_LENGTH": "1000000", **env}
    with tempfile.TemporaryDirectory(prefix="groker-bench-db-") as tmp:
        settings.setdefault("GROKER_DB_PATH", f"{tmp}/b.db")

        def start(port: int, out: IO[bytes]) -> subprocess.Popen[bytes]:
            process, _ = launch_broker(out, port=port, popen_options=CHILD_OPTIONS, **settings)
            return process

        probe = "http://127.0.0.1:{port}" + ready
        with running(serve_on_free_port(f"broker-{store}", start, probe)) as proc:
            yield f"http://127.0.0.1:{proc.port}", proc


@contextlib.contextmanager
def sinks(paths: int, processes: int = 2, host: str = "127.0.0.1") -> Iterator[list[str]]:
    """`paths` sink URLs (http://host:port/sink/i) over `processes` sink processes."""
    argv = [PYTHON, "-m", "bench.sink", "--host", host, "--port", "{port}"]
    procs: list[Proc] = []
    try:
        for _ in range(processes):
            procs.append(serve("sink", argv, f"http://{host}:{{port}}/count"))
        yield [f"http://{host}:{procs[i % processes].port}/sink/{i}" for i in range(paths)]
    finally:
        for proc in procs:
            proc.stop()


def subscribe_all(broker_url: str, callbacks: Sequence[str], token: str | None = None) -> None:
    for callback in callbacks:
        call("POST", f"{broker_url}/subscriptions", {"callback": callback}, token)


# --- measuring ------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (a store's writer thread
    included), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name, in parentheses, may hold spaces: count fields after it. utime and
    # stime are fields 14 and 15, the 12th and 13th after the name.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.contextmanager
def cpu_used(pids: Mapping[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each named process used inside the block, the whole machine's (`machine`:
    every process, the load tool and the subscribers included) and the block's `wall_s`:
    the dict yielded is filled in on leaving it."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    machine, stolen = machine_cpu_seconds(), steal_seconds()
    began = time.monotonic()
    used: dict[str, float] = {}
    yield used
    used.update({name: round(cpu_seconds(pid) - before[name], 3) for name, pid in pids.items()})
    used["machine"] = round(machine_cpu_seconds() - machine, 3)
    used["steal"] = round(steal_seconds() - stolen, 3)
    used["wall_s"] = round(time.monotonic() - began, 3)


def machine_cpu_seconds() -> float:
    """CPU seconds every core of this machine spent busy (/proc/stat: user, nice, system,
    irq, softirq) since it started. Not steal: that is the hypervisor running some other
    machine while this one waited for the core (`steal_seconds`)."""
    user, nice, system, _idle, _iowait, irq, softirq = _cpu_ticks()[:7]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other machines while this one's cores wanted to run."""
    return _cpu_ticks()[7] / CLOCK_TICKS


def _cpu_ticks() -> list[int]:
    return [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 is a latency someone really saw)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def wait_stats(url: str, key: str, target: int, timeout: float) -> tuple[float, dict]:
    """Poll /stats until stats[key] >= target; returns (monotonic time reached, stats)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = call("GET", f"{url}/stats")
        now = time.monotonic()
        if stats[key] >= target:
            return now, stats
        if now > deadline:
            raise TimeoutError(f"{key} {stats[key]} < {target} after {timeout}s: {stats}")
        gevent.sleep(0.02)


def ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else math.nan
