"""Keeps this replica subscribed: subscribes on start, again if the broker forgets it
(restart, removal), and unsubscribes on the way out."""

from __future__ import annotations

import logging

import gevent

from client.settings import CloudEventsMode, Format
from groker_common.http import HttpPool

log = logging.getLogger(__name__)


class Subscription:
    def __init__(
        self,
        broker_url: str,
        callback: str,
        interval: float,
        http: HttpPool,
        token: str | None = None,
        max_batch: int = 1,
        format: Format = "groker",
        cloudevents_mode: CloudEventsMode = "binary",
    ) -> None:
        self._url = broker_url.rstrip("/")
        self._token = token
        # What we ask the broker to send, in every subscribe request.
        self._asked = {
            "max_batch": max_batch,
            "format": format,
            "cloudevents_mode": cloudevents_mode,
        }
        self.callback = callback
        self._interval = interval
        self._http = http
        self.id: str | None = None
        self.secret: str | None = None  # signs what the broker sends us; from its answer
        self._answered = gevent.event.Event()
        self._subscribing = gevent.lock.Semaphore()
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            ok = self.ensure()
            gevent.sleep(self._interval if ok else 1.0)

    def ensure(self) -> bool:
        """Subscribing is idempotent: 200 means the broker still has us, 201 that it had
        forgotten us (or never knew) and we are subscribed anew."""
        with self._subscribing:
            return self._subscribe()

    def settled_secret(self, timeout: float = 5.0) -> str | None:
        """The secret once no subscribe call is under way. A delivery can beat the broker's
        answer to our subscribe (it starts delivering as soon as it has registered us): the
        inbox's WebhookReceiver asks this when the secret held does not verify one (this
        class is its groker_common.webhooks.SecretHolder)."""
        self._answered.wait(timeout)
        with self._subscribing:
            return self.secret

    def _subscribe(self) -> bool:
        try:
            status, answer = self._http.request_json(
                "POST",
                f"{self._url}/subscriptions",
                {"callback": self.callback, **self._asked},
                timeout=5,
                token=self._token,
            )
        except Exception as exc:
            log.info("broker at %s not reachable yet: %s", self._url, exc)
            return False
        if status not in (200, 201):
            log.warning("subscribe answered %s: %s", status, answer)
            return False
        if status == 201:
            if self.id is not None:
                log.warning("broker had forgotten subscription %s; subscribed again", self.id)
            log.info("subscribed as %s with callback %s", answer["id"], self.callback)
        self.remember(answer)
        return True

    def remember(self, answer: dict) -> None:
        """Keep what the broker's answer to a subscribe says: our id and signing secret."""
        self.id = answer["id"]
        self.secret = answer.get("secret")
        self._answered.set()

    def stop(self) -> None:
        """Unsubscribe for good; safe to call again (SIGTERM, then worker exit)."""
        if self._greenlet is not None:
            self._greenlet.kill()
        if self.id is None:
            self._http.close()
            return
        try:
            status, _ = self._http.request_json(
                "DELETE", f"{self._url}/subscriptions/{self.id}", timeout=3, token=self._token
            )
            log.info("unsubscribed %s (HTTP %s)", self.id, status)
        except Exception as exc:
            log.warning("could not unsubscribe %s: %s", self.id, exc)
        self.id = None
        self._http.close()
