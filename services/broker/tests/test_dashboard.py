"""The dashboard: its page, snapshot and event stream through Flask's test client, then the
page itself in a real headless Chromium, following a real gunicorn broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import gevent
import pytest

from groker_common.http import HttpPool
from groker_common.testing import wait_until

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "test-artifacts" / "dashboard.png"
# Debian's Chromium by default; GROKER_CHROMIUM points elsewhere (e.g. Chrome on CI runners).
CHROMIUM = Path(os.environ.get("GROKER_CHROMIUM", "/usr/bin/chromium"))
# Debian's Chromium, launched as-is: no sandbox (we may be root in a container), and nothing
# that would make it reach out to the internet.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGE_IDS = {
    "connection",
    "queue-length",
    "oldest-age",
    "subscriber-count",
    "accepted",
    "published",
    "delivered",
    "failed",
    "removed",
    "publish-rate",
    "delivery-rate",
    "rates",
    "subscribers",
    "replicas",
    "recent",
}


class PageAttributes(HTMLParser):
    """The ids on a page, and every URL it loads (src and href)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.urls.append(value)


def events(response) -> Iterator[dict[str, Any]]:
    """The snapshots a streamed /dashboard/events response sends, as they arrive."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))


# --- through Flask's test client -----------------------------------------------------------


def test_the_page_has_its_elements_and_loads_nothing_from_elsewhere(client):
    with client.get("/") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        page = PageAttributes()
        page.feed(response.get_data(as_text=True))
    assert page.ids >= PAGE_IDS
    assert page.urls, "the page loads its script and stylesheet"
    for url in page.urls:
        assert url.startswith("/dashboard/static/"), f"{url} is not served by the broker"
        with client.get(url) as asset:
            assert asset.status_code == 200


def test_the_snapshot_shows_a_new_subscriber(client, make_sink):
    sink = make_sink()
    assert client.post("/subscriptions", json={"callback": sink.url}).status_code == 201
    assert client.post("/messages", json={"body": "hello"}).status_code == 202

    def snapshot() -> dict[str, Any]:
        return client.get("/dashboard/snapshot").get_json()

    # The lane counts a delivery once the sink has answered, a moment after it received it.
    wait_until(lambda: snapshot()["stats"]["delivered"] == 1, what="the delivery")
    shown = snapshot()
    assert [(s["callback"], s["delivered"]) for s in shown["subscribers"]] == [(sink.url, 1)]
    assert shown["stats"]["accepted"] == 1
    assert [(m["seq"], m["status"]) for m in shown["recent"]] == [(1, "published")]
    assert sink.received[0]["body"] == "hello"
    # A broker of its own (no shared store): the one replica, alone, holding every lane.
    assert [(r["name"], r["role"]) for r in shown["replicas"]] == [(socket.gethostname(), "alone")]


def test_the_event_stream_sends_a_snapshot_at_once(client, make_sink):
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    response = client.get("/dashboard/events", buffered=False)
    try:
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        with gevent.Timeout(5, AssertionError("no event within 5 s")):
            first = next(events(response))
        assert first["stats"]["subscribers"] == 1
        assert first["subscribers"][0]["callback"] == sink.url
    finally:
        response.close()


def test_the_event_stream_ends_when_the_broker_drains(app, client):
    response = client.get("/dashboard/events", buffered=False)
    try:
        stream = events(response)
        with gevent.Timeout(5, AssertionError("no event within 5 s")):
            assert next(stream)["stats"]["draining"] is False
        app.extensions["groker"].drain()
        with gevent.Timeout(5, AssertionError("the stream went on after draining")):
            rest = list(stream)
        # The last event says why the stream ends, so the page can show it.
        assert rest, "an event saying the broker is draining"
        assert rest[-1]["stats"]["draining"] is True
    finally:
        response.close()

    # A page that reconnects to a draining broker hears so once, and is let go.
    late = client.get("/dashboard/events", buffered=False)
    try:
        with gevent.Timeout(5, AssertionError("the stream went on while draining")):
            assert [e["stats"]["draining"] for e in events(late)] == [True]
    finally:
        late.close()


# --- in a real browser, against a real broker ----------------------------------------------


@pytest.fixture
def browser_tools() -> None:
    """Fail, not skip, without the browser and its driver: a dashboard nobody looked at in a
    browser is not tested."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(
            f"a Chromium at {CHROMIUM} (apt-get install -y chromium, or set GROKER_CHROMIUM)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append(
            "Playwright for Python (pip install playwright==1.65.2; no `playwright install`: "
            "the test drives /usr/bin/chromium)"
        )
    if missing:
        pytest.fail("the dashboard's browser test needs " + " and ".join(missing))


@pytest.fixture
def live_broker(start_broker) -> tuple[subprocess.Popen, str]:
    broker = start_broker()
    return broker.process, broker.url


def test_the_page_follows_the_broker_in_a_real_browser(browser_tools, live_broker, make_sink):
    process, url = live_broker
    sink = make_sink()
    http = HttpPool()
    try:
        status, answer = http.request_json("POST", f"{url}/subscriptions", {"callback": sink.url})
    finally:
        http.close()
    assert status == 201, answer

    # Playwright's sync API runs an asyncio loop of its own, which would keep this process's
    # gevent hub, and so the sink, from running while it waits. So the browser is driven
    # from a real thread, and this greenlet waits for it cooperatively.
    gevent.get_hub().threadpool.apply(
        drive_the_page, (url, sink.url, lambda: process.send_signal(signal.SIGTERM))
    )
    assert [m["body"] for m in sink.received] == [{"n": n} for n in range(3)]
    # The open page's event stream must not hold the stopping broker for gunicorn's whole
    # graceful timeout (30 s): it ends once the broker drains.
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the broker took over 15 s to stop after SIGTERM with the page open")


def drive_the_page(url: str, callback: str, stop_broker: Callable[[], None]) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            script_errors: list[str] = []
            page.on("pageerror", lambda exc: script_errors.append(str(exc)))
            page.goto(f"{url}/")
            expect(page.locator("#connection")).to_have_text("live", timeout=10_000)
            expect(page.locator("#subscribers tr")).to_have_count(1)
            expect(page.locator("#subscribers")).to_contain_text(callback)
            accepted = page.locator("#accepted")
            expect(accepted).to_have_text("0")

            # One message per event, each awaited on the page, so the rate chart has a few
            # points to draw by the time of the screenshot.
            for n in range(3):
                answer = page.request.post(f"{url}/messages", data={"body": {"n": n}})
                assert answer.status == 202, answer.text()
                expect(accepted).not_to_have_text(str(n), timeout=10_000)
                expect(accepted).to_have_text(str(n + 1))
            expect(page.locator("#delivered")).to_have_text("3", timeout=10_000)
            expect(page.locator("#subscribers tr").first).to_contain_text("3")
            expect(page.locator("#recent tr")).to_have_count(3)
            expect(page.locator("#recent tr").first).to_contain_text("published")
            expect(page.locator("#replicas tr")).to_have_count(1)
            expect(page.locator("#replicas")).to_contain_text("alone")
            # One more event after the last publish, so the chart shows the rates fall back.
            updated = page.locator("#updated").text_content()
            expect(page.locator("#updated")).not_to_have_text(updated or "", timeout=10_000)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert not script_errors, script_errors

            stop_broker()
            expect(page.locator("#connection")).to_have_text("disconnected", timeout=20_000)
        finally:
            browser.close()
