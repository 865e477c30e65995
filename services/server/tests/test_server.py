"""The load generator against a real broker and a real subscriber on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import gevent
import pytest

from broker.app import create_app as create_broker
from broker.settings import BrokerSettings
from groker_common.http import HttpPool
from groker_common.retry_after import parse_retry_after
from groker_common.signatures import new_secret, sign
from groker_common.testing import serve, serve_app_at_its_url, wait_until
from groker_common.webhooks import challenge_echo
from server.app import create_app
from server.publisher import MAX_BACKOFF
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
        assert answer["latency_ms"]["p50"] <= answer["latency_ms"]["p99"]
    finally:
        sink_server.stop(timeout=0)


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
