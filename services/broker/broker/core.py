"""The broker itself, with no HTTP in it: accept, subscribe, publish, report.

`Broker` wires the store, the subscriber registry, the lanes, the dispatcher and the
senders together; the Flask routes are a thin layer over its methods."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from broker.counters import Counters
from broker.dispatcher import Dispatcher
from broker.lanes import Lane
from broker.messages import Message, Mode
from broker.registry import Subscriber, SubscriberRegistry
from broker.senders import AsyncSender, CallbackNotifier, Sender, SyncSender
from broker.settings import BrokerSettings
from broker.store import MemoryStore, MessageStore
from groker_common.http import HttpPool

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queue_length` unpublished messages; try again later."""


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
        self.store = store or MemoryStore(self.settings.retention_count)
        self._http = http or HttpPool()
        self._notifier = CallbackNotifier(
            self._http,
            self.counters,
            attempts=self.settings.notify_attempts,
            timeout=self.settings.notify_timeout,
        )
        self.registry = SubscriberRegistry(self._open_lane, self._wake, self.counters)
        self._dispatcher = Dispatcher(self.store, self.registry)
        self._seq = self.store.last_seq()
        self.ready = False
        self.draining = False

    def start(self) -> None:
        self._dispatcher.start()
        self.ready = True

    def drain(self) -> None:
        """Shutting down: /readyz answers 503 and new publishes are refused; what is queued
        stays queued, and deliveries under way go on until the process exits."""
        self.draining = True

    def stop(self) -> None:
        self.ready = False
        self.draining = True
        self._dispatcher.stop()
        self.registry.close()
        self._notifier.close()
        self._http.close()

    def publish(
        self,
        body: Any,
        mode: Mode = "async",
        headers: dict[str, str] | None = None,
        callback: str | None = None,
    ) -> Message:
        """Accept a message onto the tail of the queue and return it, seq assigned."""
        if self.draining:
            raise Draining()
        if self.store.unpublished() >= self.settings.max_queue_length:
            self.counters.rejected_full += 1
            raise QueueFull()
        sender: Sender = SyncSender() if mode == "sync" else AsyncSender(self._notifier)
        self._seq += 1
        message = Message(
            id=str(uuid.uuid4()),
            seq=self._seq,
            body=body,
            headers=headers or {},
            mode=mode,
            callback=callback,
            sender=sender,
        )
        self.store.append(message)
        self.counters.accepted += 1
        self._wake()
        return message

    def subscribe(self, callback: str) -> tuple[Subscriber, bool]:
        return self.registry.subscribe(callback)

    def unsubscribe(self, subscriber_id: str) -> bool:
        return self.registry.unsubscribe(subscriber_id)

    def message(self, message_id: str) -> Message | None:
        return self.store.get(message_id)

    def stats(self) -> dict[str, Any]:
        return {
            "queue_length": self.store.queued(),
            "unpublished": self.store.unpublished(),
            "last_seq": self._seq,
            "subscribers": len(self.registry),
            "lane_backlog": {lane.subscriber.id: lane.backlog for lane in self.registry.lanes()},
            **self.counters.as_dict(),
        }

    def _wake(self) -> None:
        self._dispatcher.wake()

    def _open_lane(self, subscriber: Subscriber) -> Lane:
        return Lane(
            subscriber,
            self._http,
            self.settings,
            self.counters,
            on_published=self._published,
            on_unreachable=self.registry.unsubscribe,
        )

    def _published(self, message: Message) -> None:
        self.store.mark_published(message)
        self.counters.published += 1
        log.debug(
            "published seq %d id %s delivered %d failed %d",
            message.seq,
            message.id,
            message.delivered,
            message.failed,
        )
        if message.sender is not None:
            message.sender.on_published(message)
