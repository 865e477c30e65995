"""The publishing loop: a steady rate of messages, some sync and some async, each published
(and retried) in its own greenlet so that a broker that is down or slow does not stall it."""

from __future__ import annotations

import logging
import random
import socket
import time
import uuid
from typing import Any

import gevent
import gevent.pool

from groker_common.http import HttpPool
from server.sending import Outgoing, Sender
from server.settings import ServerSettings
from server.stats import PublishStats

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, settings: ServerSettings, stats: PublishStats, http: HttpPool) -> None:
        self._settings = settings
        self._stats = stats
        self._http = http
        self._url = settings.broker_url.rstrip("/")
        self.rate = settings.rate
        self.sync_ratio = settings.sync_ratio
        self._source = socket.gethostname()
        # Idempotency keys are `<run>-<n>`: unique to this run, the same on every attempt.
        self._run_id = uuid.uuid4().hex
        self._sender = Sender(settings, stats, http)
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = gevent.event.Event()
        self._rate_changed = gevent.event.Event()
        # Messages being published or retried. Bounded, so that a long outage holds the
        # loop instead of piling up greenlets.
        self._in_flight = gevent.pool.Pool(settings.max_in_flight)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def set_rate(self, rate: float, sync_ratio: float | None = None) -> None:
        """Change the pace while running (PUT /rate); 0 pauses publishing."""
        self.rate = rate
        if sync_ratio is not None:
            self.sync_ratio = sync_ratio
        self._rate_changed.set()

    def stop(self) -> None:
        """Publish no new messages; those under way (retries included) carry on."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
        self._in_flight.kill(block=False)
        self._http.close()

    def _run(self) -> None:
        self._wait_for_broker()
        next_at = time.monotonic()
        n = 0
        while not self._stopping.is_set():
            # Read once: PUT /rate may change it (to 0 too) while this loop waits below.
            rate = self.rate
            if rate <= 0:
                self._rate_changed.clear()
                gevent.wait([self._stopping, self._rate_changed], count=1)
                next_at = time.monotonic()
                continue
            # The broker's Retry-After (queue full, stopping) holds new messages too.
            due = max(next_at, self._sender.quiet_until)
            if self._stopping.wait(max(0.0, due - time.monotonic())) or not self._room():
                break
            n += 1
            self._in_flight.spawn(self._sender.publish, self.outgoing(n))
            # Catch up with a late wake-up, but never burst more than a second's worth
            # after a long wait (an outage, a full in-flight pool).
            next_at = max(due + 1.0 / rate, time.monotonic() - 1.0)

    def _room(self) -> bool:
        """Wait until another message may be in flight; False if stopping meanwhile."""
        while self._in_flight.full():
            if self._stopping.is_set():
                return False
            self._in_flight.wait_available(timeout=1)
        return not self._stopping.is_set()

    def outgoing(self, n: int) -> Outgoing:
        """Message n, sync or async by the current ratio; counted as sent."""
        mode = "sync" if random.random() < self.sync_ratio else "async"
        sent_at = time.time()
        payload: dict[str, Any] = {
            "body": {"n": n, "sent_at": sent_at, "source": self._source},
            "mode": mode,
        }
        if mode == "async":
            payload["callback"] = self._settings.callback_url
        self._stats.sent += 1
        return Outgoing(n, mode, f"{self._run_id}-{n}", payload, sent_at)

    def _wait_for_broker(self) -> None:
        while not self._stopping.is_set():
            try:
                status, _ = self._http.request_json("GET", f"{self._url}/readyz", timeout=2)
                if status == 200:
                    log.info("broker at %s is ready", self._url)
                    return
            except Exception as exc:
                log.info("waiting for broker at %s: %s", self._url, exc)
            self._stopping.wait(1)
