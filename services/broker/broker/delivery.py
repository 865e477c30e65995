"""One delivery: POST a message's payload (or a batch of them, as a JSON array; or, to a
subscriber that asked for them, CloudEvents: cloudevents.py) to one subscriber, signed,
with a few quick retries within the delivery timeout. Lanes (lanes.py) decide what to
deliver and when."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import gevent
from prometheus_client import Histogram
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from broker.cloudevents import CloudEventsFormat
from broker.errors import Gone, RefusedDestination, Unreachable
from broker.guard import CallbackGuard
from broker.model import Message, Subscriber
from groker_common.http import HttpPool
from groker_common.signatures import sign

DELIVERY_HEADERS = {"Content-Type": "application/json", "User-Agent": "groker"}
RETRY_PAUSE = 0.05  # seconds before the first retry; tenacity backs off after that


class Delivery(NamedTuple):
    """What one POST carries: its webhook id (signed with it), its body and its headers
    (the signature's aside)."""

    id: str
    payload: bytes
    headers: dict[str, str] = DELIVERY_HEADERS


class Courier:
    """Shared by every lane: the HTTP pool, the destination guard and the retry policy."""

    def __init__(
        self,
        http: HttpPool,
        guard: CallbackGuard,
        attempts: int,
        deadline: float,
        latency: Histogram,
        cloudevents: CloudEventsFormat | None = None,
    ) -> None:
        self._http = http
        self._cloudevents = cloudevents or CloudEventsFormat()
        self._guard = guard
        self._attempts = attempts
        self._deadline = deadline
        self._timeout = deadline / attempts
        self._latency = latency
        self._present: Callable[[], bool] | None = None

    def fence(self, present: Callable[[], bool]) -> None:
        """Make no attempt unless `present()` (lane_host.py: a replica that went silent past
        its lease holds its lanes no more); an attempt refused ends the lane's greenlet."""
        self._present = present

    def deliver(self, subscriber: Subscriber, messages: list[Message]) -> int:
        """POST the messages (one, or a batch for a subscriber that takes batches), once
        signed; the subscriber's HTTP status (< 500 and not 410). Raises Unreachable when
        every attempt failed, Gone when the subscriber is not to be called again."""
        began = time.perf_counter()
        # One POST, one signature, one id for a batch: a retry of it is the same one.
        more = len(messages) - 1
        webhook_id = f"{messages[0].id}+{more}" if more else messages[0].id
        if subscriber.format == "cloudevents":
            headers, payload = self._cloudevents.delivery(subscriber, messages)
            delivery = Delivery(webhook_id, payload, DELIVERY_HEADERS | headers)
        elif subscriber.max_batch == 1:
            delivery = Delivery(webhook_id, messages[0].payload)
        else:
            delivery = Delivery(webhook_id, b"[" + b",".join(m.payload for m in messages) + b"]")
        status = self._attempt_all(subscriber, delivery, began)
        self._latency.observe(time.perf_counter() - began)
        return status

    def _attempt_all(self, subscriber: Subscriber, delivery: Delivery, began: float) -> int:
        """One attempt, and the retry machinery only when it fails: most deliveries succeed
        at once, and tenacity's bookkeeping costs more than the POST's own Python work."""
        try:
            return self._post(subscriber, delivery)
        except Unreachable:
            if self._attempts == 1:
                raise
        remaining = self._deadline - (time.perf_counter() - began)
        gevent.sleep(RETRY_PAUSE)
        # The rest of the attempts, within what is left of the delivery timeout.
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts - 1) | stop_after_delay(max(0.0, remaining)),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception_type(Unreachable),
            sleep=gevent.sleep,
            reraise=True,
        )
        return retrying(self._post, subscriber, delivery)

    def _post(self, subscriber: Subscriber, delivery: Delivery) -> int:
        if self._present is not None and not self._present():
            raise gevent.GreenletExit  # quietly: not retried, not a failure of the subscriber
        url = subscriber.callback
        try:
            self._guard.check(url)  # again at delivery time: DNS can change
        except RefusedDestination as exc:
            raise Gone(f"callback now refused: {exc}") from exc
        headers = delivery.headers | sign(subscriber.secret, delivery.id, delivery.payload)
        try:
            status, _ = self._http.request("POST", url, delivery.payload, headers, self._timeout)
        except Exception as exc:  # any transport failure means the same: not reached
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if status == 410:
            raise Gone("410 Gone")
        if status >= 500:
            raise Unreachable(f"HTTP {status}")
        return status
