"""The end of a message's way through the broker: every delivery outcome is recorded here,
and when the last member of a message's delivery set is done, the message is published:
stored as such, counted, and its publisher told (through its `Reply`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broker.metrics import BrokerMetrics
from broker.model import Counters, Message
from broker.storage.base import MessageStore

log = logging.getLogger(__name__)


class Publication:
    """Where lanes report; one per broker."""

    def __init__(
        self,
        store: MessageStore,
        counters: Counters,
        metrics: BrokerMetrics,
        announce: Callable[[Message], None] | None = None,
    ) -> None:
        self._store = store
        self._counters = counters
        self._metrics = metrics
        # In a cluster: tells the other replicas (intake.Announcer), where sync publishers
        # may wait on the message too.
        self._announce = announce

    def record(self, message: Message, subscriber_id: str, delivered: bool) -> None:
        """One subscriber's outcome for one message (idempotent per subscriber)."""
        if delivered:
            self._counters.delivered += 1
        else:
            self._counters.failed += 1
        if message.resolve(subscriber_id, delivered):
            self._published(message)

    def _published(self, message: Message) -> None:
        self._store.mark_published(message)
        self._counters.published += 1
        self._metrics.publish_latency[message.mode].observe(time.time() - message.accepted_at)
        log.debug(
            "published seq %d id %s delivered %d failed %d",
            message.seq,
            message.id,
            message.delivered,
            message.failed,
            extra={"message_id": message.id, "seq": message.seq},
        )
        if message.reply is not None:
            message.reply.on_published(message)
        if self._announce is not None:
            self._announce(message)
