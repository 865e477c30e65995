from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.app import create_app as create_broker
from broker.settings import BrokerSettings
from client.app import create_app
from client.settings import ClientSettings
from groker_common.testing import serve, serve_app_at_its_url


@pytest.fixture
def broker_url() -> Iterator[str]:
    """A real broker, served on loopback in this process."""
    app = create_broker(
        BrokerSettings(store="memory", delivery_timeout=1.0, allowed_networks=["127.0.0.0/8"])
    )
    server, url = serve(app)
    yield url
    server.stop(timeout=0)
    app.extensions["groker"].stop()


@pytest.fixture
def start_client(broker_url) -> Iterator[Callable[..., Any]]:
    """Subscriber apps served on loopback, subscribing themselves to the broker."""
    started = []

    def start(**overrides: Any):
        app, server, _ = serve_app_at_its_url(
            lambda url: create_app(
                ClientSettings(broker_url=broker_url, callback_url=f"{url}/messages", **overrides)
            )
        )
        started.append((app, server))
        return app

    yield start
    for app, server in started:
        app.extensions["groker_on_exit"]()
        server.stop(timeout=0)
