"""A standby replica's answer to every request but a publish: the owner's.

Publishes are taken by every replica (inbox.py); the rest of the API (subscriptions, message
status, stats, the dashboard) is the owner's, which holds the subscribers' lanes and the
queue's figures. A load balancer or a Kubernetes Service sends requests to any ready
replica, so a standby relays those to the owner, at the address the owner gives in the
replicas' roster (GROKER_ADVERTISE_URL), and relays the answer back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gevent
import valkey
from flask import Request, Response

from broker.errors import Standby
from broker.storage.lease import OwnerLease
from groker_common.http import HttpPool

# The request headers that mean something to the broker; hop-by-hop ones stay here.
REQUEST_HEADERS = ("authorization", "content-type", "accept", "idempotency-key", "x-request-id")
# Set on a relayed request: a replica that gets one but does not own the queue (the roster
# was out of date) answers 503 rather than relay it again, round and round.
RELAYED = "X-Groker-Relayed"
# What of the owner's answer goes back: its body's type, and the broker's own headers.
ANSWER_HEADERS = ("content-type", "location", "retry-after", "idempotent-replayed")
# Seconds the owner's address is trusted before it is read from the roster again.
OWNER_TTL = 1.0


class Forwarder:
    def __init__(self, lease: OwnerLease, http: HttpPool, timeout: float) -> None:
        self._lease = lease
        self._http = http
        self._timeout = timeout
        self._owner: tuple[float, str | None] = (0.0, None)

    def _owner_url(self) -> str | None:
        read_at, url = self._owner
        if time.monotonic() - read_at > OWNER_TTL:
            try:
                url = self._lease.owner_url()
            except valkey.ValkeyError:
                url = None  # Valkey unreachable: the owner cannot be known (503, retried)
            self._owner = (time.monotonic(), url)
        return url

    def forward(self, request: Request) -> Response:
        """The owner's answer to `request`; Standby (503) if no owner can be reached."""
        if RELAYED in request.headers:
            raise Standby()
        path = request.full_path if request.query_string else request.path
        status, body, answer = self._relay(
            request.method, path, request.get_data(), _kept(request.headers)
        )
        kept = {k: v for k, v in answer.items() if k in ANSWER_HEADERS}
        return Response(body, status, kept)

    def events(self, request: Request, snapshot_path: str, interval: float) -> Response:
        """A standby's dashboard stream (server-sent events): the owner's snapshot, asked
        for every `interval` seconds, as long as the page listens."""
        headers = _kept(request.headers)

        def stream() -> Iterator[str]:
            yield "retry: 1000\n"
            while True:
                try:
                    status, body, _ = self._relay("GET", snapshot_path, b"", headers)
                except Standby:
                    return  # the page reconnects, maybe to the new owner
                if status != 200:
                    return
                yield f"data: {body.decode()}\n\n"
                gevent.sleep(interval)

        return Response(
            stream(),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _relay(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        url = self._owner_url()
        if url is None:
            raise Standby()
        try:
            return self._http.relay(method, url + path, body, headers, self._timeout)
        except OSError as exc:
            self._owner = (0.0, None)  # the owner may have changed: read the roster again
            raise Standby() from exc


def _kept(headers: Any) -> dict[str, str]:
    """The request headers to relay, marked as relayed."""
    kept = {k: v for k, v in headers.items() if k.lower() in REQUEST_HEADERS}
    kept[RELAYED] = "1"
    return kept
