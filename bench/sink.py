"""A fast webhook receiver for the benchmarks: a raw WSGI callable (no framework) that
answers 200 to every POST, echoes the broker's subscription challenge, and counts what it
took (`GET /count`). Served by gevent's pywsgi, one process per port:

    python -m bench.sink --port 9100 [--host 0.0.0.0]

Any path is a sink, so one process stands in for many subscribers (/sink/0, /sink/1, ...)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from typing import Any

OK = b"{}"
JSON = [("Content-Type", "application/json")]
received = 0


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    global received
    if environ["REQUEST_METHOD"] != "POST":
        answer = json.dumps({"received": received}).encode()
        start_response("200 OK", [*JSON, ("Content-Length", str(len(answer)))])
        return [answer]
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    answer = OK
    # Deliveries start {"id":...; only a verification carries its type this early, so the
    # hot path never parses JSON.
    if b"subscription.verify" in raw[:48]:
        answer = json.dumps({"challenge": json.loads(raw)["challenge"]}).encode()
    else:
        received += 1
    start_response("200 OK", [*JSON, ("Content-Length", str(len(answer)))])
    return [answer]


def main() -> None:
    from gevent import socket
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description="benchmark webhook sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # pywsgi sends the headers and the body in two writes: without TCP_NODELAY (inherited
    # by accepted sockets) Nagle holds the body for the client's delayed ACK, 40 ms a call.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind((args.host, args.port))
    listener.listen(1024)
    # No access log: writing a line per request would cost more than answering it.
    WSGIServer(listener, app, log=None).serve_forever()


if __name__ == "__main__":
    main()
