"""The publishing loop: a steady rate of messages, some sync and some async."""

from __future__ import annotations

import logging
import random
import socket
import time

import gevent

from groker_common.http import HttpPool
from groker_common.retry_after import parse_retry_after
from server.settings import ServerSettings
from server.stats import PublishStats

log = logging.getLogger(__name__)

# The longest pause a 503 with Retry-After makes the publishing loop take.
MAX_BACKOFF = 60.0


class Publisher:
    def __init__(self, settings: ServerSettings, stats: PublishStats, http: HttpPool) -> None:
        self._settings = settings
        self._stats = stats
        self._http = http
        self._url = settings.broker_url.rstrip("/")
        self.rate = settings.rate
        self.sync_ratio = settings.sync_ratio
        self._source = socket.gethostname()
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = gevent.event.Event()
        self._rate_changed = gevent.event.Event()
        self._in_flight = gevent.pool.Group()  # sync publishes and polls still waiting

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def set_rate(self, rate: float, sync_ratio: float | None = None) -> None:
        """Change the pace while running (PUT /rate); 0 pauses publishing."""
        self.rate = rate
        if sync_ratio is not None:
            self.sync_ratio = sync_ratio
        self._rate_changed.set()

    def stop(self) -> None:
        """Publish no more; a publish under way finishes and gets its answer."""
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
            if self.rate <= 0:
                self._rate_changed.clear()
                gevent.wait([self._stopping, self._rate_changed])
                next_at = time.monotonic()
                continue
            n += 1
            mode = "sync" if random.random() < self.sync_ratio else "async"
            backoff = self.publish_one(n, mode)
            next_at = max(next_at + 1.0 / self.rate, time.monotonic() + backoff)
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

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

    def publish_one(self, n: int, mode: str) -> float:
        """Publish message n; returns how long to back off (the broker's Retry-After)."""
        sent_at = time.time()
        payload: dict = {"body": {"n": n, "sent_at": sent_at, "source": self._source}, "mode": mode}
        if mode == "async":
            payload["callback"] = self._settings.callback_url
        self._stats.sent += 1
        if mode == "sync":
            # A sync publish holds its request open until published: do not hold the loop.
            self._in_flight.spawn(self._send, payload, sent_at)
            return 0.0
        return self._send(payload, sent_at)

    def _send(self, payload: dict, sent_at: float) -> float:
        mode = payload["mode"]
        try:
            status, answer, headers = self._http.exchange_json(
                "POST",
                f"{self._url}/messages",
                payload,
                timeout=self._settings.sync_timeout + 5,
                token=self._settings.publish_token,
            )
        except Exception as exc:
            self._stats.errors += 1
            log.warning("publish failed: %s", exc)
            return 1.0
        finally:
            if mode == "sync":
                waited = time.time() - sent_at
                self._stats.max_sync_wait = max(self._stats.max_sync_wait, waited)
        if isinstance(answer, dict) and "seq" in answer and status in (200, 202, 503, 504):
            # Accepted. A sync publish answered 504 (timed out) or 503 (broker stopping)
            # is still queued and will be published: find out when by polling.
            self._stats.accepted_message(answer["id"], mode, sent_at)
            if status == 200:
                self._stats.confirm(answer["id"])
            elif status != 202:
                self._stats.sync_timeouts += status == 504
                self._in_flight.spawn(self._poll_until_published, answer["id"])
            return 0.0
        if status == 503:
            self._stats.rejected += 1
            return parse_retry_after(headers.get("retry-after"), maximum=MAX_BACKOFF)
        self._stats.errors += 1
        log.warning("publish answered %s: %s", status, answer)
        return 0.0

    def _poll_until_published(self, message_id: str) -> None:
        """A sync publish that timed out is still published later: find out by polling."""
        while message_id in self._stats.pending:
            gevent.sleep(1)
            try:
                status, answer = self._http.request_json(
                    "GET",
                    f"{self._url}/messages/{message_id}",
                    timeout=5,
                    token=self._settings.publish_token,
                )
            except Exception:
                continue
            if status == 200 and answer["status"] == "published":
                self._stats.confirm(message_id)
            elif status == 404:
                return
