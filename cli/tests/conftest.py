"""Fixtures for the CLI's tests: a real gunicorn broker per test (so no test sees another's
queue), the installed `groker` console script run as a subprocess, as a user runs it, and
`groker subscribe` in the background with its output collected."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from groker_common.testing import free_port, launch_broker, poll, stop_process

GROKER = str(Path(sys.executable).with_name("groker"))


# Blocking polls: these tests drive subprocesses, not greenlets.
wait_until = poll


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without the variables the CLI reads, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("GROKER_BROKER_URL", "GROKER_TOKEN", "GROKER_SYNC_TIMEOUT")
    }
    return env | extra


def run_cli(
    *args: str, input: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GROKER, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
        check=False,
    )


@dataclass
class Broker:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        # A stopping gunicorn worker waits out the keep-alive period of connections it has
        # served, closed or not: without this every broker takes ~5 s to stop.
        self.http.headers["Connection"] = "close"

    def get(self, path: str) -> Any:
        response = self.http.get(self.url + path, timeout=5)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, payload: Any) -> requests.Response:
        return self.http.post(self.url + path, json=payload, timeout=5)

    def stats(self) -> dict[str, Any]:
        return self.get("/stats")

    def callbacks(self) -> list[str]:
        return [s["callback"] for s in self.get("/subscriptions")["subscriptions"]]

    def posted(self) -> list[str]:
        """The paths of the POSTs answered so far, in order, from the access log of a broker
        started with GUNICORN_ACCESSLOG="-" (the CLI's requests, which nothing else counts)."""
        paths = []
        for line in self.log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("logger") == "gunicorn.access":
                paths += re.findall(r'"POST (\S+) HTTP', entry["message"])
        return paths

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Start a real broker (gunicorn + gevent, memory store) with extra GROKER_* settings."""
    started: list[Broker] = []

    def start(**settings: str) -> Broker:
        log = tmp_path / f"broker-{len(started)}.log"
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            process, url = launch_broker(
                stdout=output,
                GROKER_DRAIN_TIMEOUT="2",
                GUNICORN_KEEPALIVE="1",  # the CLI's connections: see Broker.__post_init__
                **settings,
            )
        broker = Broker(url, process, log)
        started.append(broker)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the broker exited: {log.read_text()[-2000:]}")
            try:
                return broker.http.get(f"{broker.url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout=30, what="the broker to start")
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(start_broker: Callable[..., Broker]) -> Broker:
    return start_broker()


class Subscriber:
    """`groker subscribe` on a loopback port, in the background; stdout parsed line by line
    into `bodies`, stderr kept in `stderr_lines`."""

    def __init__(self, broker_url: str) -> None:
        self.port = free_port()
        self.callback = f"http://127.0.0.1:{self.port}/"
        self.id: str | None = None
        self.process = subprocess.Popen(
            [
                *(GROKER, "--broker", broker_url, "subscribe"),
                *("--listen", f"127.0.0.1:{self.port}", "--callback-url", self.callback),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        self.bodies: list[Any] = []
        self.stderr_lines: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.bodies.append(json.loads(line))

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_subscribed(self, broker: Broker) -> str:
        """Wait until the broker lists this subscriber; its subscription id."""

        def listed() -> str | None:
            if self.process.poll() is not None:
                raise AssertionError(f"groker subscribe exited: {self.stderr}")
            for s in broker.get("/subscriptions")["subscriptions"]:
                if s["callback"] == self.callback:
                    return str(s["id"])
            return None

        return wait_until(listed, what="the subscription to be listed")

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=20)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# The tests run with --import-mode=importlib, where a test module cannot import this file;
# the helpers reach them as fixtures instead.


class Groker:
    """The installed `groker` command, run with a clean environment."""

    path = GROKER

    def run(
        self, *args: str, input: str | None = None, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, input=input, timeout=timeout, **env)

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([GROKER, *args], text=True, env=cli_env(), **kwargs)


@pytest.fixture
def groker() -> Groker:
    return Groker()


@pytest.fixture(name="wait_until")
def _wait_until() -> Callable[..., Any]:
    return wait_until


@pytest.fixture
def make_subscriber() -> Iterator[Callable[[Broker], Subscriber]]:
    """Start `groker subscribe` against a broker and wait until the broker lists it."""
    running: list[Subscriber] = []

    def make(broker: Broker) -> Subscriber:
        subscriber = Subscriber(broker.url)
        running.append(subscriber)
        subscriber.id = subscriber.wait_subscribed(broker)
        return subscriber

    yield make
    for subscriber in running:
        subscriber.close()
