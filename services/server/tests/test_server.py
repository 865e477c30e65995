"""The load generator against a real broker and a real subscriber on loopback."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from broker.app import create_app as create_broker
from broker.settings import BrokerSettings
from groker_common.http import HttpPool
from groker_common.retry_after import parse_retry_after
from groker_common.signatures import new_secret, sign
from groker_common.testing import (
    free_port,
    launch_broker,
    serve,
    serve_app_at_its_url,
    wait_until,
    worker_pid,
)
from groker_common.webhooks import WebhookReceiver, challenge_echo
from server.app import create_app
from server.sending import MAX_BACKOFF
from server.settings import ServerSettings


def broker_app(**overrides):
    """A real broker in memory; loopback allowed, where the test's receivers listen."""
    return create_broker(
        BrokerSettings(store="memory", allowed_networks=["127.0.0.0/8"], **overrides)
    )


@pytest.fixture(autouse=True)
def http() -> Iterator[HttpPool]:
    pool = HttpPool()
    yield pool
    pool.close()


@pytest.fixture
def stack() -> Iterator[list]:
    started: list = []
    yield started
    for app, server in reversed(started):
        app.extensions["groker_on_exit"]()
        server.stop(timeout=0)


def start(stack: list, app) -> str:
    server, url = serve(app)
    stack.append((app, server))
    return url


def start_server(stack: list, broker_url: str, **overrides) -> tuple:
    app, server, url = serve_app_at_its_url(
        lambda url: create_app(
            ServerSettings(broker_url=broker_url, callback_url=f"{url}/notifications", **overrides)
        )
    )
    stack.append((app, server))
    return app, url


def sink_app(environ, start_response):
    challenge = challenge_echo(environ["wsgi.input"].read())
    if challenge is not None:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [challenge]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [b"{}"]


def test_publishes_sync_and_async_and_confirms_both(stack, http):
    broker_url = start(stack, broker_app())
    sink_server, sink_url = serve(sink_app)
    try:
        http.request_json("POST", f"{broker_url}/subscriptions", {"callback": sink_url})
        app, url = start_server(stack, broker_url, rate=50, sync_ratio=0.5)
        stats = app.extensions["groker"].stats
        wait_until(lambda: stats.confirmed_sync >= 5 and stats.confirmed_async >= 5)
        app.extensions["groker"].publisher.stop()
        wait_until(
            lambda: not stats.pending and stats.accepted == stats.sent,
            what="every message sent accepted and confirmed",
        )
        answer = http.request_json("GET", f"{url}/stats")[1]
        assert answer["accepted"] == answer["confirmed"] == answer["sent"]
        metrics = http.request("GET", f"{url}/metrics")[1].decode()
        assert f"groker_server_sent_total {float(answer['sent'])}" in metrics
        assert "groker_server_pending 0.0" in metrics
        assert f"groker_server_e2e_latency_seconds_count {float(answer['confirmed'])}" in metrics
        assert answer["errors"] == answer["unknown_notifications"] == 0
        assert answer["lost"] == answer["duplicates"] == answer["retries"] == 0
        for name in ("lost", "duplicates", "retries", "replayed"):
            assert f"groker_server_{name}_total 0.0" in metrics
        assert answer["latency_ms"]["p50"] <= answer["latency_ms"]["p99"]
    finally:
        sink_server.stop(timeout=0)


def test_sync_publishes_waiting_hold_up_no_others(stack):
    """Nobody subscribed, so every sync publish waits (each on a connection of its own)
    while the async ones due after it are still sent and accepted."""
    broker_url = start(stack, broker_app(sync_timeout=30))
    app, _ = start_server(stack, broker_url, rate=100, sync_ratio=0.5)
    stats = app.extensions["groker"].stats
    wait_until(lambda: stats.sent >= 60, what="60 messages sent")
    # More waiting sync publishes than the 8 connections a pool has by default.
    wait_until(lambda: stats.accepted >= 25, timeout=10, what="the async ones accepted")
    assert stats.confirmed_sync == 0  # the sync ones are all still waiting
    app.extensions["groker"].publisher.stop()


def test_backs_off_when_the_queue_is_full(stack):
    broker_url = start(
        stack,
        broker_app(max_queue_length=3),
    )
    app, _ = start_server(stack, broker_url, rate=200, sync_ratio=0)
    stats = app.extensions["groker"].stats
    wait_until(lambda: stats.rejected >= 1, what="a 503")
    assert stats.accepted == 3
    sent = stats.sent
    # Retry-After is 1 s: the loop does not hammer the broker meanwhile.
    wait_until(lambda: stats.sent > sent, timeout=3, what="the next attempt after backing off")
    assert stats.sent - sent <= 2


def test_notification_webhook_checks_what_it_gets(stack):
    app = create_app(ServerSettings(rate=0))
    client = app.test_client()
    assert client.post("/notifications", json={"id": "x", "status": "published"}).status_code == 200
    assert client.get("/stats").get_json()["unknown_notifications"] == 1
    for bad in ({"status": "published"}, {"id": 1}, {"id": "x", "status": "queued"}, [1]):
        answer = client.post("/notifications", json=bad)
        assert answer.status_code == 400 and answer.get_json()["error"] == "invalid notification"


def test_rate_can_be_changed_while_running(stack):
    broker_url = start(stack, broker_app())
    app, _ = start_server(stack, broker_url, rate=0)
    client = app.test_client()
    stats = app.extensions["groker"].stats
    assert client.put("/rate", json={"rate": -1}).status_code == 400
    assert client.put("/rate", json={"rate": 1, "sync_ratio": 2}).status_code == 400
    assert stats.sent == 0  # rate 0 publishes nothing
    answer = client.put("/rate", json={"rate": 100, "sync_ratio": 0})
    assert answer.get_json() == {"rate": 100.0, "sync_ratio": 0.0}
    wait_until(lambda: stats.sent >= 5, timeout=15, what="publishing at the new rate")
    client.put("/rate", json={"rate": 0})
    sent = stats.sent
    gevent.sleep(0.2)
    assert stats.sent <= sent + 1
    # Paused while the loop was waiting for its next message, it resumes when asked.
    for _ in range(3):
        client.put("/rate", json={"rate": 2})
        gevent.sleep(0.1)
        client.put("/rate", json={"rate": 0})
    client.put("/rate", json={"rate": 100})
    sent = stats.sent
    wait_until(lambda: stats.sent >= sent + 5, timeout=15, what="publishing after the pauses")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 1.0),  # no hint: a second
        ("3", 3.0),
        ("2.5", 2.5),
        ("-4", 0.0),
        ("9999", 60.0),  # the publishing loop's ceiling
        ("nan", 1.0),
        ("soon", 1.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date gone by
    ],
)
def test_the_brokers_retry_after_is_honoured_within_reason(header, seconds):
    assert parse_retry_after(header, maximum=MAX_BACKOFF) == seconds


def test_retry_after_as_an_http_date():
    later = format_datetime(datetime.now(tz=UTC) + timedelta(seconds=20), usegmt=True)
    assert 15 < parse_retry_after(later, maximum=MAX_BACKOFF) <= 20


def test_a_garbled_signature_on_a_notification_is_a_401_not_a_crash():
    secret = new_secret()
    app = create_app(ServerSettings(broker_url="http://127.0.0.1:9", callback_secret=secret))
    try:
        body = b'{"id": "x", "status": "published"}'
        headers = sign(secret, "x", body) | {"webhook-signature": "v1"}
        answer = app.test_client().post("/notifications", data=body, headers=headers)
        assert answer.status_code == 401 and answer.get_json()["error"] == "bad signature"
        assert app.extensions["groker"].stats.bad_signatures == 1
    finally:
        app.extensions["groker_on_exit"]()


# --- retries with an Idempotency-Key ------------------------------------------------------


class Sink:
    """A subscriber on loopback taking every delivery once (repeats, by id, dropped), with
    the shared receiver every groker subscriber uses; signatures are not its concern."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.receiver = WebhookReceiver(None, self.messages.append)
        self.open = gevent.event.Event()  # cleared: deliveries are held, unanswered
        self.open.set()
        self.server, self.url = serve(self)

    def __call__(self, environ, start_response):
        raw = environ["wsgi.input"].read()
        self.open.wait()
        status, answer = self.receiver.handle(raw, {})
        start_response(f"{status} Sink", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    def numbers(self) -> Counter[int]:
        """How often each message n of the load generator was delivered (distinct ids)."""
        return Counter(m["body"]["n"] for m in self.messages)


@pytest.fixture
def sink() -> Iterator[Sink]:
    sink = Sink()
    yield sink
    sink.server.stop(timeout=0)


class Tap:
    """Between the load generator and a real broker: passes every request on, records each
    publish (its Idempotency-Key and body), and hangs up on the first `cut` publishes
    without answering, after the broker took them: answers lost on their way back."""

    def __init__(self, broker_url: str, cut: int) -> None:
        self.publishes: list[tuple[str | None, Any]] = []
        self._broker_url = broker_url
        self._cut = cut
        self._http = HttpPool()
        self._server = StreamServer(("127.0.0.1", 0), self._handle)
        self._server.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def close(self) -> None:
        self._server.stop(timeout=0)
        self._http.close()

    def _handle(self, sock, _address) -> None:
        with sock, sock.makefile("rb") as reader:
            request_line = reader.readline().decode()
            if not request_line:
                return
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            while line := reader.readline().decode().strip():
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            raw = reader.read(int(headers.get("content-length", 0)))
            payload = json.loads(raw) if raw else None
            key = headers.get("idempotency-key")
            status, answer, answer_headers = self._http.exchange_json(
                method,
                self._broker_url + path,
                payload,
                timeout=60,
                extra_headers={"Idempotency-Key": key} if key else None,
            )
            if (method, path) == ("POST", "/messages"):
                self.publishes.append((key, payload))
                if len(self.publishes) <= self._cut:
                    return  # the broker has it; the publisher hears nothing
            body = b"" if answer is None else json.dumps(answer).encode()
            head = [f"HTTP/1.1 {status} Tapped", f"Content-Length: {len(body)}"]
            head += ["Content-Type: application/json", "Connection: close"]
            for name in ("retry-after", "idempotent-replayed", "location"):
                if name in answer_headers:
                    head.append(f"{name}: {answer_headers[name]}")
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def refused(port: int) -> bool:
    """Nothing listens on the port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except (ConnectionResetError, TimeoutError):
        return False  # a listener still going away (its backlog reset): not yet
    return False


def settled(app) -> bool:
    """Every message sent has its outcome: accepted and confirmed, or lost."""
    state = app.extensions["groker"]
    stats = state.stats
    return (
        state.publisher.in_flight == 0
        and not stats.pending
        and stats.accepted + stats.lost == stats.sent
    )


def test_a_publish_whose_answer_is_lost_is_retried_with_the_same_key_and_body(stack, http, sink):
    broker = broker_app()
    broker_url = start(stack, broker)
    assert (
        http.request_json("POST", f"{broker_url}/subscriptions", {"callback": sink.url})[0] == 201
    )
    cut = 4
    tap = Tap(broker_url, cut)
    try:
        app, _ = start_server(stack, tap.url, rate=20, sync_ratio=0.5)
        stats = app.extensions["groker"].stats
        wait_until(lambda: stats.sent >= 12, what="a dozen messages")
        app.extensions["groker"].publisher.stop()
        wait_until(lambda: settled(app), timeout=15, what="every message settled")
    finally:
        tap.close()

    keys = [key for key, _ in tap.publishes]
    assert all(keys), tap.publishes
    # One key per message, `<run>-<n>`, sent with the very same body on every attempt.
    bodies: dict[str, Any] = {}
    for key, payload in tap.publishes:
        assert key is not None and key.rsplit("-", 1)[1] == str(payload["body"]["n"])
        assert bodies.setdefault(key, payload) == payload, key
    assert len({key.rsplit("-", 1)[0] for key in bodies}) == 1
    assert len(bodies) == stats.sent
    # Every answer cut off was asked for again, and the broker replayed what it had.
    for key in keys[:cut]:
        assert keys.count(key) >= 2, key
    asked_before = [key in keys[:i] for i, key in enumerate(keys)]
    assert stats.retries == sum(asked_before)
    assert stats.replayed == sum(asked_before[cut:])
    assert (stats.lost, stats.duplicates) == (0, 0)
    assert http.request_json("GET", f"{broker_url}/stats")[1]["accepted"] == stats.sent
    wait_until(lambda: len(sink.messages) == stats.sent, what="every message delivered")
    assert sink.numbers() == Counter(range(1, stats.sent + 1))


def test_a_refused_publish_is_lost_at_once_not_retried(stack):
    broker_url = start(stack, broker_app(publish_tokens=["right"]))
    app, _ = start_server(stack, broker_url, rate=20, publish_token="wrong")
    stats = app.extensions["groker"].stats
    wait_until(lambda: stats.lost >= 3, what="refused messages")
    app.extensions["groker"].publisher.stop()
    wait_until(lambda: settled(app), what="every message settled")
    assert stats.lost == stats.sent and stats.accepted == stats.retries == 0


def test_a_message_refused_past_the_retry_budget_is_lost(stack):
    # No subscriber and room for one: the first is kept, every later one gets 503.
    broker_url = start(stack, broker_app(max_queue_length=1))
    app, _ = start_server(stack, broker_url, rate=5, sync_ratio=0, retry_seconds=2.5)
    stats = app.extensions["groker"].stats
    wait_until(lambda: stats.lost >= 1, timeout=10, what="a message given up")
    # Retry-After is 1 s: attempts at 0, 1 and 2 s, and no sleep past the 2.5 s budget.
    assert stats.accepted == 1 and stats.retries >= 2
    answer = app.test_client().get("/stats").get_json()
    assert answer["lost"] >= 1 and answer["duplicates"] == 0
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert f"groker_server_lost_total {float(stats.lost)}" in metrics


def test_a_broker_that_is_down_holds_the_loop_at_the_in_flight_bound(stack):
    tap = Tap(start(stack, broker_app()), cut=0)
    try:
        app, _ = start_server(stack, tap.url, rate=200, sync_ratio=0, max_in_flight=5)
        state = app.extensions["groker"]
        wait_until(lambda: state.stats.accepted >= 3, what="publishing")
    finally:
        tap.close()  # the broker unreachable, not draining: no 503 and Retry-After
    # Connections refused, no Retry-After: only the bound holds the loop, once every
    # message out is one the broker will not answer (one accepted just before the cut
    # still frees its place).
    wait_until(
        lambda: state.publisher.in_flight == 5 == state.stats.sent - state.stats.accepted,
        what="the in-flight bound reached",
    )
    sent = state.stats.sent
    gevent.sleep(0.5)  # 100 messages' time at this rate
    assert state.stats.sent == sent
    assert state.publisher.in_flight == 5 == sent - state.stats.accepted
    assert state.stats.lost == 0 and state.stats.retries >= 5


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_broker_restarted_under_load_loses_and_duplicates_nothing(
    stack, http, sink, tmp_path: Path, stop_signal
):
    """A real gunicorn broker with its SQLite store, stopped (gracefully or killed) while
    the load generator publishes sync and async, and started again on the same port."""
    port = free_port()
    settings = {
        "GROKER_STORE": "sqlite",
        "GROKER_DB_PATH": str(tmp_path / "groker.db"),
        "GROKER_DRAIN_TIMEOUT": "10",
        # A sync publish that races the drain waits this out before the broker can exit.
        "GROKER_SYNC_TIMEOUT": "5",
        "GUNICORN_KEEPALIVE": "1",  # a stopping worker waits out idle keep-alive connections
    }

    def launch():
        process, url = launch_broker(port=port, **settings)

        def ready() -> bool:
            assert process.poll() is None, "the broker exited"
            try:
                return http.request_json("GET", f"{url}/readyz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout=30, what="the broker to start")
        return process, url

    first, broker_url = launch()
    second = None
    try:
        subscribed = http.request_json(
            "POST", f"{broker_url}/subscriptions", {"callback": sink.url}
        )
        assert subscribed[0] == 201, subscribed
        app, _ = start_server(stack, broker_url, rate=40, sync_ratio=0.5, sync_timeout=5)
        stats = app.extensions["groker"].stats
        wait_until(lambda: stats.accepted >= 30, timeout=15, what="publishing")
        # Sync publishers left waiting when the broker goes: their retries must get the
        # same messages back (replayed), not queue them again.
        sink.open.clear()
        publisher = app.extensions["groker"].publisher
        wait_until(lambda: publisher.in_flight >= 3, what="sync publishers waiting")
        if stop_signal == signal.SIGKILL:
            # The worker is the broker: killed with its master, so none takes its place.
            worker = worker_pid(first.pid)
            first.kill()
            os.kill(worker, signal.SIGKILL)
        else:
            # Waiting sync publishers are answered 503 at once; the delivery under way
            # then finishes within the drain (a subscriber hung past it would be dropped).
            first.send_signal(stop_signal)
            gevent.sleep(0.5)
            sink.open.set()
        wait_until(lambda: first.poll() is not None, timeout=40, what="the broker to stop")
        wait_until(lambda: refused(port), what="the worker gone")
        sink.open.set()
        down_at = stats.sent
        # Draining answers Retry-After 5: the loop may hold that long first.
        wait_until(lambda: stats.sent >= down_at + 20, timeout=15, what="publishing on")
        second, _ = launch()
        accepted = stats.accepted
        wait_until(lambda: stats.accepted >= accepted + 30, timeout=30, what="publishing again")
        publisher.stop()
        wait_until(lambda: settled(app), timeout=30, what="every message settled")
        assert (stats.lost, stats.duplicates) == (0, 0)
        assert stats.retries > 0 and stats.replayed > 0
        wait_until(lambda: len(sink.messages) >= stats.sent, timeout=15, what="every delivery")
        assert sink.numbers() == Counter(range(1, stats.sent + 1))
    finally:
        sink.open.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                wait_until(lambda p=process: p.poll() is not None, timeout=40, what="a stop")
