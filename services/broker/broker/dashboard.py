"""The live dashboard at `/`: a static page that follows `Broker.snapshot()` over
server-sent events.

SSE rather than polling or WebSockets: one long-lived response per open page costs a
greenlet under gunicorn+gevent, the browser's EventSource reconnects by itself, and it
needs nothing beyond plain HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import gevent
from flask import Blueprint, Response, current_app

from broker.core import Broker
from broker.operations import Documented, route
from broker.replica import Replica
from broker.routes import current_broker

# Seconds between two events on a stream; the page's rate chart assumes about one a second.
EVENT_INTERVAL = 1.0
SNAPSHOT_PATH = "/dashboard/snapshot"
# How long the browser waits before reconnecting a dropped stream, in milliseconds.
RECONNECT_MS = 2000

dashboard = Blueprint(
    "dashboard", __name__, static_folder="static", static_url_path="/dashboard/static"
)


def _snapshot(broker: Broker, replica: Replica) -> dict[str, Any]:
    """The broker's snapshot, and the replicas there are (in cluster mode, with which one
    owns the queue and every lane)."""
    return {**broker.snapshot(), "replicas": replica.roster()}


def _event(broker: Broker, replica: Replica) -> str:
    return f"data: {json.dumps(_snapshot(broker, replica), separators=(',', ':'))}\n\n"


def _replica() -> Replica:
    return cast(Replica, current_app.extensions["groker_replica"])


@route(
    dashboard,
    "GET",
    "/",
    operation_id="dashboard",
    replies={200: Documented("the live dashboard", content_type="text/html")},
)
def page() -> Response:
    return dashboard.send_static_file("dashboard.html")


@route(
    dashboard,
    "GET",
    SNAPSHOT_PATH,
    operation_id="dashboard_snapshot",
    replies={200: Documented("what the dashboard shows", schema={"type": "object"})},
)
def snapshot() -> dict:
    return _snapshot(current_broker(), _replica())


@route(
    dashboard,
    "GET",
    "/dashboard/events",
    operation_id="dashboard_events",
    replies={
        200: Documented(
            "snapshots as server-sent events, every second", content_type="text/event-stream"
        )
    },
)
def events() -> Response:
    broker, replica = current_broker(), _replica()

    def stream() -> Iterator[str]:
        yield f"retry: {RECONNECT_MS}\n"
        # A client that goes away makes the server's next write fail, and the server then
        # closes this generator at its `yield`; nothing else is needed to stop it.
        # A draining broker ends the stream: an open one would hold the stopping worker for
        # gunicorn's whole graceful timeout.
        while not broker.draining:
            yield _event(broker, replica)
            gevent.sleep(EVENT_INTERVAL)
        yield _event(broker, replica)  # the last one says it is draining, so the page can show why

    return Response(
        stream(),
        mimetype="text/event-stream",
        # No-cache, and no buffering by a proxy in front (nginx honours X-Accel-Buffering),
        # so each event reaches the page when it is sent.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
