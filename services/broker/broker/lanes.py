"""One ordered delivery lane per subscriber.

Each subscriber gets its own bounded queue and greenlet, so a slow or hung subscriber delays
only itself: the others keep receiving, and the dispatcher waits on a full lane at most as
long as it takes to give up on that subscriber (the delivery timeout)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import gevent.queue
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from broker.counters import Counters
from broker.guard import CallbackGuard, RefusedDestination
from broker.messages import Message
from broker.registry import Subscriber
from broker.settings import BrokerSettings
from groker_common.http import HttpPool
from groker_common.signatures import sign

log = logging.getLogger(__name__)

DELIVERY_HEADERS = {"Content-Type": "application/json", "User-Agent": "groker"}
RETRY_PAUSE = 0.05  # seconds before the first retry; tenacity backs off after that


class Unreachable(Exception):
    """Connection refused or reset, timeout, or 5xx: worth another quick attempt."""


class Gone(Exception):
    """410 Gone (the subscriber asked to be removed), or its address is now refused."""


class Lane:
    def __init__(
        self,
        subscriber: Subscriber,
        http: HttpPool,
        guard: CallbackGuard,
        settings: BrokerSettings,
        counters: Counters,
        observe_latency: Callable[[float], None],
        on_published: Callable[[Message], None],
        on_unreachable: Callable[[str, str], None],
    ) -> None:
        self.subscriber = subscriber
        self._http = http
        self._guard = guard
        self._timeout = settings.attempt_timeout
        self._counters = counters
        self._observe_latency = observe_latency
        self._on_published = on_published
        self._on_unreachable = on_unreachable
        self._queue: gevent.queue.Queue[Message] = gevent.queue.Queue(settings.lane_capacity)
        self._attempts = settings.delivery_attempts
        self._deadline = settings.delivery_timeout
        self._current: Message | None = None
        self.closed = False
        self.delivered = 0
        self.failed = 0
        self._greenlet = gevent.spawn(self._run)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def describe(self) -> dict[str, object]:
        """The subscriber and how its lane is doing, for the dashboard."""
        return {
            **self.subscriber.describe(),
            "backlog": self.backlog,
            "delivered": self.delivered,
            "failed": self.failed,
        }

    @property
    def busy(self) -> bool:
        return self._current is not None or not self._queue.empty()

    def put(self, message: Message) -> None:
        """Hand a message to this lane; blocks while the lane is full."""
        if not self.closed:
            self._queue.put(message)
        if self.closed:
            # Closed before or while we waited for room: nobody will deliver it.
            self._drain()

    def close(self) -> None:
        """Stop delivering; whatever this lane still holds counts as failed for it."""
        if self.closed:
            return
        self.closed = True
        if self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        if self._current is not None:
            self._resolve(self._current, delivered=False)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                message = self._queue.get_nowait()
            except gevent.queue.Empty:
                return
            self._resolve(message, delivered=False)

    def _resolve(self, message: Message, delivered: bool) -> None:
        if delivered:
            self._counters.delivered += 1
            self.delivered += 1
        else:
            self._counters.failed += 1
            self.failed += 1
        if message.resolve(self.subscriber.id, delivered):
            self._on_published(message)

    def _run(self) -> None:
        while not self.closed:
            message = self._current = self._queue.get()
            began = time.perf_counter()
            try:
                status = self._deliver(message, began)
            except Gone as exc:
                reason = str(exc)
            except Unreachable as exc:
                reason = str(exc)
            else:
                self._current = None
                self._observe_latency(time.perf_counter() - began)
                if status >= 300:
                    log.warning(
                        "subscriber %s refused seq %d with HTTP %d",
                        self.subscriber.id,
                        message.seq,
                        status,
                        extra={"message_id": message.id, "seq": message.seq},
                    )
                self._resolve(message, delivered=status < 300)
                continue
            self._on_unreachable(self.subscriber.id, reason)
            return

    def _deliver(self, message: Message, began: float) -> int:
        """One attempt, and the retry machinery only when it fails: most deliveries succeed
        at once, and tenacity's bookkeeping costs more than the POST's own Python work."""
        try:
            return self._post(message)
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
        return retrying(self._post, message)

    def _post(self, message: Message) -> int:
        url = self.subscriber.callback
        try:
            self._guard.check(url)  # again at delivery time: DNS can change
        except RefusedDestination as exc:
            raise Gone(f"callback now refused: {exc}") from exc
        headers = DELIVERY_HEADERS | sign(self.subscriber.secret, message.id, message.payload)
        try:
            status, _ = self._http.request("POST", url, message.payload, headers, self._timeout)
        except Exception as exc:  # any transport failure means the same: not reached
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if status == 410:
            raise Gone("410 Gone")
        if status >= 500:
            raise Unreachable(f"HTTP {status}")
        return status
