"""The local webhook endpoint behind `groker subscribe`.

A stdlib ThreadingHTTPServer in a background thread. What it answers each POST is
groker_common.webhooks' WebhookReceiver, the same as the example client's: the broker's
subscription challenge echoed, each delivery's Standard Webhooks signature checked once the
broker has told us the secret, repeated deliveries dropped by message id, and every new
message handed to `on_message`, one at a time, in the order the deliveries arrive (the
broker sends each subscriber its messages one after another, in seq order)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from groker_common.signatures import check_secret
from groker_common.webhooks import Answer, NotSubscribedYet, WebhookReceiver, error_answer

# The broker's own limit on a body is 1 MiB by default; a delivery is that plus an envelope.
MAX_DELIVERY_BYTES = 32 * 1024 * 1024
# A delivery can race the answer to our subscribe request (which carries the secret it must
# be checked with); it waits this long for that answer, then is refused with 503 (retried).
WAIT_FOR_SUBSCRIPTION = 10.0


class Receiver:
    def __init__(
        self,
        host: str,
        port: int,
        on_message: Callable[[dict[str, Any]], None],
        on_warning: Callable[[str], None],
    ) -> None:
        """Bind HOST:PORT now (port 0: any free one); raises OSError if that fails."""
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="groker-receiver", daemon=True
        )
        self._subscribed = threading.Event()
        self.secret: str | None = None
        # A broker that gives no secret does not sign: its deliveries are taken unsigned.
        self.webhooks = WebhookReceiver(
            self,
            on_message,
            lambda reason: on_warning(
                f"rejected a delivery whose signature does not verify: {reason}"
            ),
            require_signature=False,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def rejected(self) -> int:
        """Deliveries refused for their signature."""
        return self.webhooks.bad_signatures

    def start(self) -> None:
        self._thread.start()

    def subscribed(self, secret: str | None) -> None:
        """The broker has answered our subscribe request: take deliveries from now on, and
        when it gave a signing secret, only those signed with it. Raises ValueError for a
        secret that is not a valid `whsec_<base64>` key."""
        if secret is not None:
            check_secret(secret)
            self.secret = secret
        self._subscribed.set()

    def settled_secret(self) -> str | None:
        """The secret, once the broker has answered our subscribe request (see
        groker_common.webhooks.SecretHolder)."""
        if not self._subscribed.wait(WAIT_FOR_SUBSCRIPTION):
            raise NotSubscribedYet("the subscribe answer has not arrived")
        return self.secret

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def handle(self, raw: bytes, headers: Mapping[str, str]) -> Answer:
        """Answer one POST: the status and JSON the broker gets back."""
        return self.webhooks.handle(raw, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a kept-alive broker connection must not hold up closing

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds on a
        # machine without DNS; the name is only used for CGI, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the broker reuses its connection
    # The headers and the body go out in two writes; with Nagle's algorithm on, the second
    # waits for the broker's delayed ACK of the first, 40 ms per delivery.
    disable_nagle_algorithm = True
    server_version = "groker-cli"
    timeout = 60  # an idle kept-alive connection is closed after this
    server: _Server

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return self._answer(*error_answer(411, "length required", "send Content-Length"))
        if length < 0 or length > MAX_DELIVERY_BYTES:
            self.close_connection = True  # the body stays unread: the connection is spent
            return self._answer(
                *error_answer(413, "too large", f"at most {MAX_DELIVERY_BYTES} bytes")
            )
        raw = self.rfile.read(length)
        self._answer(*self.server.receiver.handle(raw, self.headers))

    def _method_not_allowed(self) -> None:
        self._answer(
            *error_answer(405, "method not allowed", "the broker POSTs here"), Allow="POST"
        )

    do_GET = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _answer(self, status: int, answer: dict[str, Any], **headers: str) -> None:
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: stdout carries message bodies only, stderr only what needs a reader."""
