"""Fixtures for the broker's unit tests: a real broker core and real HTTP subscribers.

Everything here is gevent-native (pywsgi servers, geventhttpclient), so the tests need no
monkey-patching: whenever the test's greenlet waits, the broker's greenlets run."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.pywsgi import WSGIServer

from broker.app import create_app
from broker.core import Broker
from broker.settings import BrokerSettings
from broker.wiring import build_broker
from groker_common.http import HttpPool
from groker_common.testing import launch_broker, serve, stop_process, wait_until
from groker_common.webhooks import challenge_echo

from .valkey_server import ValkeyProcess

# In memory, fast timeouts, and loopback allowed: the sinks listen on 127.0.0.1.
TEST_SETTINGS: dict[str, Any] = {
    "store": "memory",
    "delivery_timeout": 1.0,
    "sync_timeout": 5.0,
    "notify_timeout": 1.0,
    "allowed_networks": ["127.0.0.0/8"],
}


def settings_for_tests(**overrides: Any) -> BrokerSettings:
    return BrokerSettings(**(TEST_SETTINGS | overrides))


@dataclass
class Sink:
    """A webhook receiver on loopback that records what it gets and answers as told."""

    status: int = 200
    hold: gevent.event.Event | None = None  # while set to an unset Event, requests hang
    echo_challenge: bool = True  # a willing subscriber answers the broker's challenge
    received: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hits: int = 0
    server: WSGIServer | None = None

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length)
        challenge = challenge_echo(raw)
        if challenge is not None and self.echo_challenge:  # the broker asks: do we want it?
            start_response("200 OK", [("Content-Type", "application/json")])
            return [challenge]
        self.hits += 1
        # CONTENT_TYPE too: WSGI keeps it out of the HTTP_ variables.
        self.headers.append(
            {k: v for k, v in environ.items() if k.startswith("HTTP_") or k == "CONTENT_TYPE"}
        )
        if self.hold is not None:
            self.hold.wait()
        if 200 <= self.status < 300:
            self.received.append(json.loads(raw))
            self.raw.append(raw)
        start_response(f"{self.status} X", [("Content-Type", "application/json")])
        return [b"{}"]

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    @property
    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.received]


@pytest.fixture
def make_sink() -> Iterator[Callable[..., Sink]]:
    servers: list[WSGIServer] = []

    def make(**kwargs: Any) -> Sink:
        sink = Sink(**kwargs)
        sink.server, _ = serve(sink)
        servers.append(sink.server)
        return sink

    yield make
    for server in servers:
        server.stop(timeout=0)


@pytest.fixture
def settings() -> BrokerSettings:
    return BrokerSettings(**TEST_SETTINGS)


@pytest.fixture
def broker(settings: BrokerSettings) -> Iterator[Broker]:
    core = build_broker(settings)
    core.start()
    yield core
    core.stop()


@pytest.fixture
def make_app() -> Iterator[Callable[..., Any]]:
    """Broker apps built with the given settings, each stopped after the test."""
    apps = []

    def make(settings: BrokerSettings):
        apps.append(create_app(settings))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["groker"].stop()


@pytest.fixture
def app(make_app, settings: BrokerSettings):
    return make_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


ROOT = Path(__file__).resolve().parents[3]


@dataclass
class LiveBroker:
    process: subprocess.Popen
    url: str


@contextmanager
def running_brokers() -> Iterator[Callable[..., LiveBroker]]:
    """Real brokers as deployed (see groker_common.testing.launch_broker), settings from
    GROKER_* keyword arguments; each ready when returned, all stopped on the way out."""
    started: list[LiveBroker] = []
    http = HttpPool()

    def start(standby: bool = False, **env: str) -> LiveBroker:
        """Ready once it serves the API: /stats answers, so some replica owns the queue
        (itself, unless other replicas share its Valkey). `standby`: a replica that will
        not own the queue: ready once it takes publishes (/readyz)."""
        process, url = launch_broker(**env)
        broker = LiveBroker(process, url)
        started.append(broker)
        probes = [f"{url}/readyz"] if standby else [f"{url}/readyz", f"{url}/stats"]

        def ready() -> bool:
            assert process.poll() is None, f"the broker exited with {process.returncode}"
            try:
                return all(http.request_json("GET", p, timeout=1)[0] == 200 for p in probes)
            except OSError:
                return False

        wait_until(ready, timeout=30, what="the broker to start")
        return broker

    try:
        yield start
    finally:
        http.close()
        for broker in started:
            stop_process(broker.process)


@pytest.fixture
def start_broker() -> Iterator[Callable[..., LiveBroker]]:
    with running_brokers() as start:
        yield start


@pytest.fixture(scope="session")
def valkey_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    """One real valkey-server for the session, started by the first test that needs it."""
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def valkey_server(valkey_process: ValkeyProcess) -> ValkeyProcess:
    """The session's valkey-server, running and empty."""
    valkey_process.reset()
    return valkey_process


@contextmanager
def fresh_durable_settings(
    request: pytest.FixtureRequest, store: str, **overrides: Any
) -> Iterator[BrokerSettings]:
    """Settings over an empty durable store of the kind named: a new SQLite file, or the
    session's valkey-server emptied (started only for a test that asks for valkey)."""
    if store == "valkey":
        server = request.getfixturevalue("valkey_process")
        server.reset()
        yield settings_for_tests(store="valkey", valkey_url=server.url, **overrides)
    else:
        with tempfile.TemporaryDirectory() as directory:
            db_path = f"{directory}/groker.db"
            yield settings_for_tests(store="sqlite", db_path=db_path, **overrides)


@pytest.fixture(params=["sqlite", "valkey"])
def durable_store(request: pytest.FixtureRequest) -> Iterator[BrokerSettings]:
    """Each durable backend in turn, empty."""
    with fresh_durable_settings(request, request.param, drain_timeout=1) as settings:
        yield settings


def store_environment(settings: BrokerSettings) -> dict[str, str]:
    """The GROKER_* variables that give a live broker the store these settings name."""
    return {
        "GROKER_STORE": settings.store,
        "GROKER_DB_PATH": settings.db_path,
        "GROKER_VALKEY_URL": settings.valkey_url,
    }
