"""Brings the real system up with Docker Compose for the end-to-end tests.

The deployment is started once per session (`docker compose up -d --build --wait
--scale client=3`), its logs are attached to any failing test, and it is always torn
down with `down -v`. Service URLs come from the environment so the same tests can run
against another deployment (set GROKER_E2E_MANAGE=0 to leave compose alone)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from groker_common.http import HttpPool
from groker_common.testing import poll

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 3
# Faster than the defaults so that removals and resubscriptions happen within a test.
E2E_ENV = {
    "GROKER_RATE": "5",
    "GROKER_DELIVERY_TIMEOUT": "2",
    "GROKER_RESUBSCRIBE_INTERVAL": "1",
    "GROKER_SYNC_TIMEOUT": "10",
    "GROKER_DRAIN_TIMEOUT": "5",
    "GROKER_FAULT_INJECTION": "1",
    # Enough for every message of the longest test, counted by number at each client.
    "GROKER_KEEP_RECENT": "20000",
    # The clients take batch deliveries, so every system test exercises them.
    "GROKER_MAX_BATCH": "10",
}
SYNC_TIMEOUT = float(E2E_ENV["GROKER_SYNC_TIMEOUT"])


def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode != 0:
        return "Docker Compose v2 is not available"
    probe = subprocess.run(["docker", "info"], capture_output=True)
    if probe.returncode != 0:
        return "no Docker engine answers (docker info failed)"
    return None


class System:
    def __init__(self, manage: bool) -> None:
        self.manage = manage
        port = os.environ.get("GROKER_BROKER_PORT", "8000")
        self.broker_url = os.environ.get("GROKER_E2E_BROKER_URL", f"http://localhost:{port}")
        port = os.environ.get("GROKER_SERVER_PORT", "8001")
        self.server_url = os.environ.get("GROKER_E2E_SERVER_URL", f"http://localhost:{port}")
        self.http = HttpPool()
        self.env = {**os.environ, **E2E_ENV}
        self.tokens: dict[str, str | None] = {"publish": None, "manage": None}
        self._scopes: list[tuple[re.Pattern[str], str, str]] | None = None

    def load_tokens(self) -> None:
        """The deployment made its own tokens on first start; read them where it keeps them."""
        for scope in ("publish", "manage"):
            name = f"GROKER_{scope.upper()}_TOKEN"
            self.tokens[scope] = os.environ.get(f"GROKER_E2E_{scope.upper()}_TOKEN") or (
                self.compose("exec", "-T", "broker", "cat", f"/secrets/{name}").strip()
                if self.manage
                else None
            )

    def token_for(self, method: str, path: str) -> str | None:
        """The token of the scope the broker's own OpenAPI document says the route needs
        (its routes declare their scopes once, and the document is made from that)."""
        if self._scopes is None:
            _, document = self.call("GET", f"{self.broker_url}/openapi.json")
            self._scopes = [
                (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), verb, scope)
                for template, item in document["paths"].items()
                for verb, operation in item.items()
                for requirement in operation.get("security", [])
                for scope in (name.removesuffix("Token") for name in requirement)
            ]
        path = path.split("?")[0]
        for pattern, verb, scope in self._scopes:
            if verb == method.lower() and pattern.match(path):
                return self.tokens[scope]
        return None

    # --- compose -------------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            ["docker", "compose", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"docker compose {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def docker(self, *args: str) -> str:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def scale_clients(self, n: int) -> None:
        self.compose(
            "up", "-d", "--no-recreate", "--wait", "--wait-timeout", "120",
            "--scale", f"client={n}",
        )  # fmt: skip
        poll(lambda: len(self.subscriptions()) == n, what=f"{n} subscriptions")

    def client_containers(self) -> list[str]:
        return self.compose("ps", "-q", "client").split()

    def container_ip(self, container: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return self.docker("inspect", "-f", fmt, container).strip()

    def logs(self) -> str:
        try:
            return self.compose("logs", "--no-color", "--tail", "200", timeout=60)
        except Exception as exc:
            return f"(no logs: {exc})"

    # --- HTTP ----------------------------------------------------------------------------
    def call(
        self,
        method: str,
        url: str,
        payload: Any = None,
        timeout: float = 30,
        token: str | None = None,
    ) -> tuple:
        return self.http.request_json(method, url, payload, timeout=timeout, token=token)

    def broker(self, method: str, path: str, payload: Any = None, timeout: float = 30):
        """Call the broker with the token its route needs."""
        url = f"{self.broker_url}{path}"
        return self.call(method, url, payload, timeout, token=self.token_for(method, path))

    def publish(self, body: Any, mode: str = "async") -> tuple[int, dict]:
        return self.broker("POST", "/messages", {"body": body, "mode": mode})

    def subscriptions(self) -> list[dict]:
        return self.broker("GET", "/subscriptions")[1]["subscriptions"]

    def stats(self) -> dict:
        return self.broker("GET", "/stats")[1]

    def server_stats(self) -> dict:
        return self.call("GET", f"{self.server_url}/stats")[1]

    def server_ids(self) -> tuple[list[str], set[str]]:
        """The ids the load generator got accepted (newest 100,000), and those still pending."""
        answer = self.call("GET", f"{self.server_url}/stats?ids=1")[1]
        return answer["accepted_ids"], set(answer["pending_ids"])

    def set_rate(self, rate: float, sync_ratio: float | None = None) -> None:
        spec: dict[str, float] = {"rate": rate}
        if sync_ratio is not None:
            spec["sync_ratio"] = sync_ratio
        status, answer = self.call("PUT", f"{self.server_url}/rate", spec)
        assert status == 200, answer

    def settled(self, quiet: float = 2.0, timeout: float = 120, confirmed: bool = True) -> dict:
        """The load generator's stats once every message it sent was answered (accepted
        or lost) and, if `confirmed`, confirmed, and nothing new was sent for `quiet`
        seconds: a message the loop was already waiting to send when it was paused may
        still go out."""
        deadline = time.monotonic() + timeout
        sent, since = -1, time.monotonic()
        while True:
            stats = self.server_stats()
            if stats["sent"] != sent:
                sent, since = stats["sent"], time.monotonic()
            answered = stats["in_flight"] == 0 and stats["accepted"] + stats["lost"] == sent
            done = answered and (stats["pending"] == 0 or not confirmed)
            if done and time.monotonic() - since >= quiet:
                return stats
            assert time.monotonic() < deadline, f"the load generator did not settle: {stats}"
            time.sleep(0.2)

    def received(self, callback: str) -> list[dict]:
        """What one client has received: it serves that list at its own webhook URL."""
        return self.call("GET", callback, timeout=5)[1]["messages"]

    def message(self, message_id: str) -> dict:
        return self.broker("GET", f"/messages/{message_id}")[1]

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            try:
                return self.broker("GET", "/readyz", timeout=2)[0] == 200
            except Exception:
                return False

        poll(ready, timeout, "the broker's /readyz")


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    manage = os.environ.get("GROKER_E2E_MANAGE", "1") != "0"
    if manage:
        problem = _docker_ready()
        if problem is not None:
            if os.environ.get("GROKER_REQUIRE_DOCKER") == "1":
                pytest.fail(f"GROKER_REQUIRE_DOCKER=1 but {problem}", pytrace=False)
            pytest.skip(f"end-to-end tests need Docker: {problem}")
    system = System(manage)
    if manage:
        system.compose("down", "-v", "--remove-orphans", timeout=120)
        system.compose(
            "up", "-d", "--build", "--wait", "--wait-timeout", "180",
            "--scale", f"client={CLIENTS}",
        )  # fmt: skip
    try:
        system.wait_ready()
        system.load_tokens()
        poll(lambda: len(system.subscriptions()) == CLIENTS, what="every client subscribed")
        yield system
    finally:
        if manage:
            system.compose("down", "-v", "--remove-orphans", timeout=180)
        system.http.close()


@pytest.fixture
def three_clients(system: System) -> System:
    """Each test starts from three subscribed clients, whatever the last one left."""
    system.scale_clients(CLIENTS)
    return system


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "system" in item.fixturenames:
        system = item.funcargs.get("system") or item.funcargs.get("three_clients")
        if system is not None and system.manage:
            report.sections.append(("docker compose logs", system.logs()))
    return report
