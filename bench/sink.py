"""A fast webhook receiver for the benchmarks: answers 200 to every POST, echoes the broker's
subscription challenge, and counts what it took (`GET /count`). One process per port:

    python -m bench.sink --port 9100 [--host 0.0.0.0]

Any path is a sink, so one process stands in for many subscribers (/sink/0, /sink/1, ...).

The sinks share the machine with what they measure, so every microsecond they spend is one
the brokers do not get: an asyncio protocol on uvloop with httptools' parser (the pair
uvicorn runs on) costs ~25 µs of CPU a request, where gevent's pywsgi cost ~170."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import cast

import httptools
import uvloop

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CLOSE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
received = 0


def answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class Sink(asyncio.Protocol):
    """One connection: httptools calls the on_* methods as it parses what arrives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(CLOSE)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        global received
        raw = b"".join(self.body)
        if self.parser.get_method() != b"POST":
            self.transport.write(answer(json.dumps({"received": received}).encode()))
        # Deliveries start {"id":...; only a verification carries its type this early, so
        # the hot path never parses JSON.
        elif b"subscription.verify" in raw[:48]:
            challenge = json.loads(raw)["challenge"]
            self.transport.write(answer(json.dumps({"challenge": challenge}).encode()))
        else:
            received += 1
            self.transport.write(OK)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    # Each answer is one write, so Nagle has no second half to hold back for an ACK.
    server = await loop.create_server(Sink, host, port, backlog=1024, reuse_address=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark webhook sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
