"""Test helpers the services share: real WSGI servers on loopback, bounded polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import gevent
from gevent import socket
from gevent.pywsgi import WSGIServer


def listen() -> tuple[socket.socket, str]:
    """A listening socket on a free loopback port, and its URL, for an app built later."""
    listener = socket.socket()
    # pywsgi writes headers and body separately: without this, Nagle's algorithm and
    # delayed ACKs add ~40 ms to every keep-alive request (accepted sockets inherit it).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


def serve(app: Callable[..., Any], listener: socket.socket | None = None) -> tuple[WSGIServer, str]:
    """Serve a WSGI app on loopback in this process; returns the server and its URL."""
    server = WSGIServer(listener or listen()[0], app, log=None, error_log=None)
    server.start()
    return server, f"http://127.0.0.1:{server.server_port}"


def serve_app_at_its_url(build: Callable[[str], Any]) -> tuple[Any, WSGIServer, str]:
    """For an app that must know its own URL before it starts (to give it as a callback):
    reserve the port, build the app with the URL, then serve it there."""
    listener, url = listen()
    app = build(url)
    server, _ = serve(app, listener)
    return app, server, url


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll, yielding to other greenlets, until predicate() is truthy; fail after timeout."""
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while True:
            result = predicate()
            if result:
                return result
            gevent.sleep(0.005)


def poll(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Like wait_until, for tests outside gevent (driving subprocesses or containers)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_broker(
    stdout: IO[bytes] | None = None,
    *,
    port: int | None = None,
    popen_options: Mapping[str, Any] | None = None,
    **settings: str,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a real broker as deployed (gunicorn, one gevent worker) on `port` (by default
    a free one), with GROKER_* settings over test defaults (memory store, loopback
    callbacks allowed, since test receivers listen there). `popen_options` go to Popen, for
    a caller that manages its children its own way (the benchmarks: a session of their
    own, killed with the parent). Returns at once: poll its /readyz."""
    port = port or free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "broker.app:create_app()"],
        cwd=REPO / "services/broker",
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO / 'libs'}:{REPO / 'services/broker'}",
            "PORT": str(port),
            "GROKER_STORE": "memory",
            "GROKER_LOG_LEVEL": "WARNING",
            "GROKER_ALLOWED_NETWORKS": "127.0.0.0/8",
            **settings,
        },
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        **(popen_options or {}),
    )
    return process, f"http://127.0.0.1:{port}"


def worker_pid(master: int) -> int:
    """gunicorn's worker: the master's child (one worker, so one child)."""
    for task in Path(f"/proc/{master}/task").iterdir():
        children = (task / "children").read_text().split()
        if children:
            return int(children[0])
    raise RuntimeError(f"gunicorn master {master} has no worker")


def stop_process(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM, as an orchestrator stops it; SIGKILL if it will not go."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
