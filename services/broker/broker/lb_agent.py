"""This replica's weight, for a load balancer that asks (HAProxy's `agent-check`, see
deploy/haproxy.cfg): on GROKER_AGENT_PORT, every connection is answered with one line, the
weight as a percentage of the one the balancer was configured with ("50%"), and closed.

Why the replicas are not equal: the owner sequences and writes every publish, whichever
replica took its HTTP request (inbox.py). Given an equal share of the HTTP requests as well,
it is the first to run out of CPU, and the cluster's throughput is its. So the owner asks
for GROKER_OWNER_WEIGHT percent of a standby's share; a replica alone, or a standby, for
all of it. The answer follows the role at every check: after a failover the new owner asks
for less within the balancer's agent interval."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from gevent.server import StreamServer

log = logging.getLogger(__name__)


class WeightAgent:
    def __init__(self, port: int, weight: Callable[[], int], host: str = "0.0.0.0") -> None:
        self._weight = weight
        self._server = StreamServer((host, port), self._answer)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._server.start()
        log.info("telling the load balancer this replica's weight on port %d", self.port)

    def _answer(self, sock: socket.socket, _address: object) -> None:
        try:
            sock.sendall(f"{self._weight()}%\n".encode())
        finally:
            sock.close()

    def stop(self) -> None:
        self._server.stop(timeout=1)
