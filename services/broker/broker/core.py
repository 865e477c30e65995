"""The broker itself, with no HTTP in it: accept, subscribe, publish, report, stop.

`Broker` is the one face of the core: the routes and the dashboard call its methods and
nothing behind it. It is built, with all its parts, by `wiring.build_broker`."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import gevent

from broker.challenge import challenge_callback
from broker.dispatcher import Dispatcher
from broker.errors import Draining, KeyInUse, KeyReused, QueueFull
from broker.guard import CallbackGuard
from broker.inbox import Entry
from broker.metrics import BrokerMetrics
from broker.model import (
    CloudEventsMode,
    Counters,
    Format,
    Item,
    Message,
    Mode,
    Stats,
    Subscriber,
    WaitResult,
    fingerprint,
)
from broker.publishing import Publishing
from broker.registry import SubscriberRegistry
from broker.replies import CallbackNotifier, CallbackReply, SyncReply
from broker.schemas import MessageStatus
from broker.settings import BrokerSettings
from broker.storage.base import Store
from groker_common.http import HttpPool

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 10.0


@dataclass(frozen=True)
class Parts:
    """What a broker is made of; `wiring.build_broker` makes them and connects them."""

    store: Store
    registry: SubscriberRegistry
    dispatcher: Dispatcher
    notifier: CallbackNotifier
    guard: CallbackGuard
    http: HttpPool
    counters: Counters
    metrics: BrokerMetrics


class Broker(Publishing):
    """One FIFO queue published to webhook subscribers: publishers append to the store, the
    dispatcher hands the head to every subscriber's lane, the lanes report to the
    publication, which tells the publisher (sync: its waiting request; async: its callback)."""

    def __init__(self, settings: BrokerSettings, parts: Parts) -> None:
        self.settings = settings
        self.store = parts.store
        self.registry = parts.registry
        self.counters = parts.counters
        self.metrics = parts.metrics
        self.guard = parts.guard
        self._dispatcher = parts.dispatcher
        self._notifier = parts.notifier
        self._http = parts.http
        self._callback_reply = CallbackReply(parts.notifier)
        # Requests waiting per reply: a retry with the same key waits on the same one.
        self._waiting: Counter[SyncReply] = Counter()
        self._pruner: gevent.Greenlet | None = None
        self.ready = False
        self.draining = False

    def start(self) -> None:
        """Pick up where a previous run stopped, then start publishing."""
        for message in self.store.unpublished_messages():
            # Nobody waits on a sync message from before the restart any more.
            if message.reply is None:
                message.reply = self._callback_reply
        for message in self.store.unnotified_messages():
            self._notifier.notify(message)
        self.registry.restore()
        self._dispatcher.start()
        self._pruner = gevent.spawn(self._prune_forever)
        self.ready = True

    def drain(self) -> None:
        """Stopping (SIGTERM): /readyz turns 503, new publishes are refused, nothing more is
        taken from the queue, waiting sync publishers are answered (their messages stay
        queued in the store); deliveries already handed to lanes go on."""
        if self.draining:
            return
        log.info("draining: %d messages stay queued", self.store.queued())
        self.draining = True
        self._dispatcher.pause()
        for reply in list(self._waiting):
            reply.abandon()

    def stop(self) -> None:
        """Drain, give the lanes up to `drain_timeout` to finish, then release everything."""
        self.drain()
        deadline = time.monotonic() + self.settings.drain_timeout
        while any(lane.busy for lane in self.registry.lanes()) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        self._notifier.join(timeout=max(0.0, deadline - time.monotonic()))
        self.ready = False
        self._dispatcher.stop()
        if self._pruner is not None:
            self._pruner.kill()
        self.registry.close()
        self._notifier.close()
        self.store.close()
        self._http.close()

    def publish(
        self,
        body: Any,
        mode: Mode = "async",
        headers: dict[str, str] | None = None,
        callback: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> Message:
        """Accept a message onto the tail of the queue; returns once it is stored. With
        `attributes`, the message is a published CloudEvent (cloudevents.py)."""
        message, _ = self.publish_once(None, body, mode, headers, callback, attributes)
        return message

    def accept_entry(self, entry: Entry) -> tuple[list[Message], bool]:
        """Accept a publish another replica took into the cluster's inbox (intake.py), with
        the ids and the time of acceptance it gave it; it checked the callback."""
        if self.draining:
            raise Draining()
        return self._admit(
            entry.items, entry.mode, entry.callback, entry.key, entry.batch, entry.attributes,
            ids=entry.ids, accepted_at=entry.accepted_at,
        )  # fmt: skip

    def _admit(
        self,
        encoded: list[Item],
        mode: Mode,
        callback: str | None,
        key: str | None,
        batch: bool,
        attributes: list[dict[str, Any]] | None,
        ids: list[str] | None = None,
        accepted_at: float | None = None,
    ) -> tuple[list[Message], bool]:
        bound = None
        if key is not None:
            bound = fingerprint(encoded, mode, callback, batch, attributes)
            # No yield from here to the store's append: two requests with one key cannot
            # both miss the first.
            replayed = self._replay(key, bound, len(encoded))
            if replayed is not None:
                return replayed, True
        last_seq = self.store.last_seq()
        messages = [
            Message(
                id=str(uuid.uuid4()) if ids is None else ids[i],
                seq=last_seq + 1 + i,
                body_json=body_json,
                mode=mode,
                headers=headers,
                callback=callback,
                attributes=None if attributes is None else attributes[i],
                # A batch's first message carries the key itself, so that a single publish
                # with it (or another batch) is told apart by the fingerprint.
                key=None if key is None else key if i == 0 else f"{key}#{i}",
                fingerprint=bound,
                reply=SyncReply() if mode == "sync" else self._callback_reply,
            )
            for i, (body_json, headers) in enumerate(encoded)
        ]
        if accepted_at is not None:
            for message in messages:
                message.accepted_at = accepted_at
        if (
            self.store.unpublished() + len(messages) > self.settings.max_queue_length
            or self.store.unpublished_bytes() + sum(m.size for m in messages)
            > self.settings.max_queue_bytes
        ):
            self.counters.rejected_full += 1
            raise QueueFull()
        self.store.append_all(messages)
        self.counters.accepted += len(messages)
        self._dispatcher.wake()
        self._dispatcher.wait_for_room(self.settings.flow_wait)
        return messages, False

    def _replay(self, key: str, bound: str, count: int) -> list[Message] | None:
        """The messages a key already stands for, if it was sent with this request before."""
        first = self._first_with(key)
        if first is None:
            return None
        if first.fingerprint != bound:
            raise KeyReused(key)
        if not self.store.durable(first):
            raise KeyInUse(key)
        kept = [first] + [self.store.by_key(f"{key}#{i}") for i in range(1, count)]
        if any(message is None for message in kept):
            # Retention took the newest of them before the first: cannot happen in seq order,
            # but never answer with part of a batch.
            raise KeyInUse(key)
        self.counters.replayed += 1
        return [m for m in kept if m is not None]

    def _first_with(self, key: str) -> Message | None:
        """The message a key is bound to, unless its window has passed."""
        first = self.store.by_key(key)
        if first is None or first.accepted_at < time.time() - self.settings.idempotency_seconds:
            return None
        return first

    def wait_published(self, message: Message, timeout: float | None = None) -> WaitResult:
        """Hold a sync publisher until its message is published (or we stop, or time out)."""
        if message.status == "published":
            return "published"
        if self.draining:
            # Accepted while the broker began to stop (its write or flow control held it
            # past drain()): answered now like every other waiter, not at its timeout.
            return "draining"
        reply = message.reply
        if not isinstance(reply, SyncReply) or reply.abandoned:
            # A retry (same idempotency key) of a sync publish from before a restart or a
            # drain: nobody waits on it yet. A sync message has no callback to lose.
            reply = message.reply = SyncReply()
        self._waiting[reply] += 1
        try:
            reply.wait(self.settings.sync_timeout if timeout is None else timeout)
        finally:
            self._waiting[reply] -= 1
            if self._waiting[reply] <= 0:
                del self._waiting[reply]
        if message.status == "published":
            return "published"
        return "draining" if reply.abandoned else "timeout"

    def subscribe(
        self,
        callback: str,
        max_batch: int = 1,
        max_wait_ms: int = 0,
        *,
        format: Format = "groker",
        cloudevents_mode: CloudEventsMode = "binary",
    ) -> tuple[Subscriber, bool]:
        """Subscribe a callback the guard allows, once it has echoed our challenge; the same
        callback again is the same subscription (False), not challenged again. With
        `max_batch` above 1 it receives its messages in batches (see lanes.py); with
        `format="cloudevents"`, as CloudEvents (see cloudevents.py)."""
        self.guard.check(callback)
        existing = self.registry.find(callback)
        if existing is not None:
            return existing, False
        if self.settings.verify_subscriptions:
            challenge_callback(self._http, callback, self.settings.attempt_timeout)
        subscribed = self.registry.subscribe(
            Subscriber(
                callback,
                max_batch=max_batch,
                max_wait_ms=max_wait_ms,
                format=format,
                cloudevents_mode=cloudevents_mode,
            )
        )
        self._dispatcher.wake()
        return subscribed

    def unsubscribe(self, subscriber_id: str) -> bool:
        return self.registry.unsubscribe(subscriber_id)

    def subscription(self, subscriber_id: str) -> Subscriber | None:
        return self.registry.get(subscriber_id)

    def subscriptions(self) -> list[Subscriber]:
        return [lane.subscriber for lane in self.registry.lanes()]

    def message(self, message_id: str) -> Message | None:
        return self.store.get(message_id)

    def stats(self) -> Stats:
        """The figures of this moment, read once: /stats, /metrics and the dashboard."""
        oldest = self.store.oldest_queued_at()
        lanes = self.registry.lanes()
        return Stats(
            queue_length=self.store.queued(),
            unpublished=self.store.unpublished(),
            unpublished_bytes=self.store.unpublished_bytes(),
            oldest_queued_age=round(time.time() - oldest, 3) if oldest else 0.0,
            last_seq=self.store.last_seq(),
            subscribers=len(lanes),
            lane_backlog={lane.subscriber.id: lane.backlog for lane in lanes},
            store=self.settings.store,
            replica=self.settings.replica_name,
            draining=self.draining,
            counters=self.counters,
        )

    def snapshot(self, recent: int = 20) -> dict[str, Any]:
        """Everything the dashboard shows: the stats, each subscriber with its lane, and
        the newest messages."""
        return {
            "time": time.time(),
            "stats": self.stats().as_dict(),
            "subscribers": [lane.describe() for lane in self.registry.lanes()],
            "recent": [MessageStatus.of(m).body() for m in self.store.recent(recent)],
        }

    def _prune_forever(self) -> None:
        while True:
            gevent.sleep(PRUNE_INTERVAL)
            self.store.prune()
