"""A webhook receiver to run as its own process (`python sink_process.py`): answers the
broker's subscription challenge, takes every delivery with 200, and prints its port.

For tests whose own process cannot serve HTTP while it waits (blocking clients)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        answer = b"{}"
        if isinstance(data, dict) and data.get("type") == "subscription.verify":
            answer = json.dumps({"challenge": data.get("challenge")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
