"""Test helpers the services share: real WSGI servers on loopback, bounded polling."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent import socket
from gevent.pywsgi import WSGIServer


def listen() -> tuple[socket.socket, str]:
    """A listening socket on a free loopback port, and its URL, for an app built later."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}"


def serve(app: Callable[..., Any], listener: socket.socket | None = None) -> tuple[WSGIServer, str]:
    """Serve a WSGI app on loopback in this process; returns the server and its URL."""
    server = WSGIServer(listener or ("127.0.0.1", 0), app, log=None, error_log=None)
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
