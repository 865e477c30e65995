"""The in-process view of the queue that every backend serves reads from: the queue in seq
order, the unpublished messages by id (with their total size), the recently published
ones, bounded by retention, and the idempotency keys of all of those. Backends own one
each (composition); durable ones write the same changes through to their engine."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from itertools import chain, islice

from broker.model import Message

log = logging.getLogger(__name__)


class QueueIndex:
    def __init__(self, retention_count: int, retention_seconds: float) -> None:
        self._queue: deque[Message] = deque()
        self._unpublished: dict[str, Message] = {}
        self._unpublished_bytes = 0
        self._recent: OrderedDict[str, Message] = OrderedDict()
        self._retention_count = retention_count
        self._retention_seconds = retention_seconds
        self._last_seq = 0
        # Appended but not yet durable: the head is not handed out until its write commits,
        # and a message whose write failed is taken out again, never published.
        self._uncommitted: set[str] = set()
        # A key is answered for as long as its message is kept here (and GET answers it).
        self._by_key: dict[str, Message] = {}

    def last_seq(self) -> int:
        return self._last_seq

    def carry_on_from(self, seq: int) -> None:
        """After a restart: seq goes on from the highest one ever stored."""
        self._last_seq = max(self._last_seq, seq)

    def recovered(self, subscriptions: int) -> None:
        """A durable backend loaded what it keeps: say so, if there was anything."""
        if self._queue or self._recent or subscriptions:
            log.info(
                "recovered %d queued messages, %d recent, %d subscriptions; seq goes on from %d",
                len(self._queue),
                len(self._recent),
                subscriptions,
                self._last_seq,
            )

    def append(self, message: Message, committed: bool = True) -> None:
        if not committed:
            self._uncommitted.add(message.id)
        self._queue.append(message)
        self._unpublished[message.id] = message
        self._unpublished_bytes += message.size
        self._last_seq = max(self._last_seq, message.seq)
        self._remember_key(message)

    def _remember_key(self, message: Message) -> None:
        # A key used again after its window is bound to the newer message.
        if message.key is not None:
            bound = self._by_key.get(message.key)
            if bound is None or bound.seq < message.seq:
                self._by_key[message.key] = message

    def _forget_key(self, message: Message) -> None:
        if message.key is not None and self._by_key.get(message.key) is message:
            del self._by_key[message.key]

    def by_key(self, key: str) -> Message | None:
        return self._by_key.get(key)

    def durable(self, message: Message) -> bool:
        return message.id not in self._uncommitted

    def committed(self, message: Message) -> None:
        """Its write is durable: it may be published."""
        self._uncommitted.discard(message.id)

    def forget(self, message: Message) -> None:
        """Its write failed: as if it had never been accepted. It cannot have been taken,
        since the head waits for its commit."""
        self._uncommitted.discard(message.id)
        if self._unpublished.pop(message.id, None) is not None:
            self._unpublished_bytes -= message.size
        self._queue.remove(message)
        self._forget_key(message)

    def head(self) -> Message | None:
        if not self._queue or self._queue[0].id in self._uncommitted:
            return None
        return self._queue[0]

    def take_head(self) -> Message:
        return self._queue.popleft()

    def mark_published(self, message: Message) -> None:
        if self._unpublished.pop(message.id, None) is not None:
            self._unpublished_bytes -= message.size
        self.remember_published(message)

    def remember_published(self, message: Message) -> None:
        """Keep a published message for GET, within the retention count."""
        self._recent[message.id] = message
        self._remember_key(message)
        while len(self._recent) > self._retention_count:
            _, dropped = self._recent.popitem(last=False)
            self._forget_key(dropped)

    def get(self, message_id: str) -> Message | None:
        return self._unpublished.get(message_id) or self._recent.get(message_id)

    def queued(self) -> int:
        return len(self._queue)

    def unpublished(self) -> int:
        return len(self._unpublished)

    def unpublished_bytes(self) -> int:
        return self._unpublished_bytes

    def unpublished_messages(self) -> list[Message]:
        return sorted(self._unpublished.values(), key=lambda m: m.seq)

    def unnotified_messages(self) -> list[Message]:
        return [m for m in self._recent.values() if m.callback and not m.notified]

    def oldest_queued_at(self) -> float | None:
        return self._queue[0].accepted_at if self._queue else None

    def recent(self, limit: int) -> list[Message]:
        queued = islice(reversed(self._queue), limit)
        in_flight = (m for m in self._unpublished.values() if m.published_at is not None)
        published = islice(reversed(self._recent.values()), limit)
        newest = sorted(chain(queued, in_flight, published), key=lambda m: m.seq, reverse=True)
        return newest[:limit]

    def prune(self) -> int:
        """Forget published messages older than the retention window; returns how many."""
        cutoff = time.time() - self._retention_seconds
        pruned = 0
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if (oldest.published_at or 0) >= cutoff:
                break
            self._recent.popitem(last=False)
            self._forget_key(oldest)
            pruned += 1
        return pruned


class ServedFromIndex:
    """The reads of the `MessageStore` interface, answered from a backend's own
    `QueueIndex` (each backend writes it, and its engine, its own way)."""

    _index: QueueIndex
    sound = True  # a backend of its own (SQLite, memory) knows what every write did

    def last_seq(self) -> int:
        return self._index.last_seq()

    def head(self) -> Message | None:
        return self._index.head()

    def take_head(self) -> Message:
        return self._index.take_head()

    def get(self, message_id: str) -> Message | None:
        return self._index.get(message_id)

    def by_key(self, key: str) -> Message | None:
        return self._index.by_key(key)

    def durable(self, message: Message) -> bool:
        return self._index.durable(message)

    def queued(self) -> int:
        return self._index.queued()

    def unpublished(self) -> int:
        return self._index.unpublished()

    def unpublished_bytes(self) -> int:
        return self._index.unpublished_bytes()

    def unpublished_messages(self) -> list[Message]:
        return self._index.unpublished_messages()

    def unnotified_messages(self) -> list[Message]:
        return self._index.unnotified_messages()

    def oldest_queued_at(self) -> float | None:
        return self._index.oldest_queued_at()

    def recent(self, limit: int) -> list[Message]:
        return self._index.recent(limit)
