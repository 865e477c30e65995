"""The broker itself, with no HTTP in it: accept, subscribe, publish, report, stop.

`Broker` wires the store, the subscriber registry, the lanes, the dispatcher and the
senders together; the Flask routes are a thin layer over its methods."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal

import gevent

from broker.counters import Counters
from broker.dispatcher import Dispatcher
from broker.guard import CallbackGuard
from broker.lanes import Lane
from broker.messages import Message, Mode, encode_body
from broker.metrics import BrokerMetrics
from broker.registry import Subscriber, SubscriberRegistry
from broker.senders import AsyncSender, CallbackNotifier, Sender, SyncSender
from broker.settings import BrokerSettings
from broker.store import MessageStore, open_store
from broker.verification import verify_intent
from groker_common.http import HttpPool

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 10.0


class QueueFull(Exception):
    """The queue holds as many unpublished messages (or bytes) as it may; try later."""


class Draining(Exception):
    """The broker is shutting down and accepts nothing new."""


class Broker:
    def __init__(
        self,
        settings: BrokerSettings | None = None,
        store: MessageStore | None = None,
        http: HttpPool | None = None,
    ) -> None:
        self.settings = settings or BrokerSettings()
        self.counters = Counters()
        self.metrics = BrokerMetrics()
        self.store = store or open_store(self.settings, self.metrics.store_write.observe)
        self._http = http or HttpPool()
        self.guard = CallbackGuard(self.settings.allowed_networks)
        self._notifier = CallbackNotifier(
            self._http,
            self.guard,
            self.counters,
            attempts=self.settings.notify_attempts,
            timeout=self.settings.notify_timeout,
            secret=self.settings.callback_secret,
            on_done=self.store.mark_notified,
        )
        # Stateless: one for every async message (and every message recovered after a restart).
        self._async_sender = AsyncSender(self._notifier)
        self.registry = SubscriberRegistry(self._open_lane, self._wake, self.counters, self.store)
        self._dispatcher = Dispatcher(self.store, self.registry, self.settings.flow_backlog)
        self.metrics.watch(self)
        self._waiting: set[SyncSender] = set()
        self._pruner: gevent.Greenlet | None = None
        self.ready = False
        self.draining = False

    def start(self) -> None:
        """Pick up where a previous run stopped, then start publishing."""
        for message in self.store.unpublished_messages():
            # Nobody waits on a sync message from before the restart any more.
            if message.sender is None:
                message.sender = self._async_sender
        for message in self.store.unnotified_messages():
            self._notifier.notify(message)
        self.registry.restore(self.store.subscriptions())
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
        for sender in list(self._waiting):
            sender.abandon()

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
    ) -> Message:
        """Accept a message onto the tail of the queue; returns once it is stored."""
        if self.draining:
            raise Draining()
        if callback is not None:
            self.guard.check(callback)
        sender: Sender = SyncSender() if mode == "sync" else self._async_sender
        message = Message(
            id=str(uuid.uuid4()),
            seq=self.store.last_seq() + 1,
            body_json=encode_body(body),
            mode=mode,
            headers=headers or None,
            callback=callback,
            sender=sender,
        )
        if (
            self.store.unpublished() >= self.settings.max_queue_length
            or self.store.unpublished_bytes() + message.size > self.settings.max_queue_bytes
        ):
            self.counters.rejected_full += 1
            raise QueueFull()
        self.store.append(message)
        self.counters.accepted += 1
        self._wake()
        self._dispatcher.wait_for_room(self.settings.flow_wait)
        return message

    def wait_published(self, message: Message) -> Literal["published", "timeout", "draining"]:
        """Hold a sync publisher until its message is published (or we stop, or time out)."""
        sender = message.sender
        assert isinstance(sender, SyncSender)
        self._waiting.add(sender)
        try:
            sender.wait(self.settings.sync_timeout)
        finally:
            self._waiting.discard(sender)
        if message.status == "published":
            return "published"
        return "draining" if sender.abandoned else "timeout"

    def subscribe(self, callback: str) -> tuple[Subscriber, bool]:
        """Subscribe a callback the guard allows, once it has echoed our challenge; the same
        callback again is the same subscription (False), not checked again."""
        self.guard.check(callback)
        existing = self.registry.find(callback)
        if existing is not None:
            return existing, False
        if self.settings.verify_subscriptions:
            verify_intent(self._http, callback, self.settings.attempt_timeout)
        return self.registry.subscribe(callback)

    def unsubscribe(self, subscriber_id: str) -> bool:
        return self.registry.unsubscribe(subscriber_id)

    def message(self, message_id: str) -> Message | None:
        return self.store.get(message_id)

    def stats(self) -> dict[str, Any]:
        oldest = self.store.oldest_queued_at()
        return {
            "queue_length": self.store.queued(),
            "unpublished": self.store.unpublished(),
            "unpublished_bytes": self.store.unpublished_bytes(),
            "oldest_queued_age": round(time.time() - oldest, 3) if oldest else 0.0,
            "last_seq": self.store.last_seq(),
            "subscribers": len(self.registry),
            "lane_backlog": {lane.subscriber.id: lane.backlog for lane in self.registry.lanes()},
            "store": self.settings.store,
            "draining": self.draining,
            **self.counters.as_dict(),
        }

    def snapshot(self, recent: int = 20) -> dict[str, Any]:
        """Everything the dashboard shows: the stats, each subscriber with its lane, and
        the newest messages."""
        return {
            "time": time.time(),
            "stats": self.stats(),
            "subscribers": [lane.describe() for lane in self.registry.lanes()],
            "recent": [m.outcome() for m in self.store.recent(recent)],
        }

    def _wake(self) -> None:
        self._dispatcher.wake()

    def _open_lane(self, subscriber: Subscriber) -> Lane:
        return Lane(
            subscriber,
            self._http,
            self.guard,
            self.settings,
            self.counters,
            self.metrics.delivery_latency.observe,
            on_published=self._published,
            on_unreachable=self.registry.unsubscribe,
        )

    def _published(self, message: Message) -> None:
        self.store.mark_published(message)
        self.counters.published += 1
        self.metrics.publish_latency[message.mode].observe(time.time() - message.accepted_at)
        log.debug(
            "published seq %d id %s delivered %d failed %d",
            message.seq,
            message.id,
            message.delivered,
            message.failed,
            extra={"message_id": message.id, "seq": message.seq},
        )
        if message.sender is not None:
            message.sender.on_published(message)

    def _prune_forever(self) -> None:
        while True:
            gevent.sleep(PRUNE_INTERVAL)
            self.store.prune()
