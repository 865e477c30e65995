"""Where accepted messages and subscriptions are kept.

The broker talks to a `MessageStore`. `MemoryStore` keeps everything in the process (fast,
lost with it); `SqliteStore` (sqlite_store.py) keeps the same structures in memory and
writes them through to SQLite, so that a restarted broker carries on where it stopped."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from itertools import chain, islice
from typing import TYPE_CHECKING, Protocol

from broker.messages import Message

if TYPE_CHECKING:
    from broker.registry import Subscriber
    from broker.settings import BrokerSettings


class MessageStore(Protocol):
    def last_seq(self) -> int:
        """The highest seq ever accepted (0 for an empty store), so seq never repeats."""

    def append(self, message: Message) -> None:
        """Put an accepted message at the tail of the queue; returns once it is durable."""

    def head(self) -> Message | None:
        """The oldest message not yet taken for publication, without taking it."""

    def take_head(self) -> Message:
        """Take the head for publication; it stays unpublished until `mark_published`."""

    def mark_published(self, message: Message) -> None: ...

    def mark_notified(self, message: Message) -> None:
        """The publisher's callback was told (or given up on): not to be sent again."""

    def get(self, message_id: str) -> Message | None:
        """An unpublished message, or a recently published one."""

    def queued(self) -> int:
        """Messages waiting for publication to begin."""

    def unpublished(self) -> int:
        """Messages accepted and not yet published: the queue plus those being delivered."""

    def unpublished_bytes(self) -> int:
        """The size of their bodies, for the queue's memory bound."""

    def unpublished_messages(self) -> list[Message]:
        """Every unpublished message, in seq order (to give them senders after a restart)."""

    def unnotified_messages(self) -> list[Message]:
        """Published messages whose callback has not been told yet (after a restart)."""

    def oldest_queued_at(self) -> float | None: ...

    def recent(self, limit: int) -> list[Message]:
        """The newest messages, published or not, newest first."""

    def prune(self) -> int:
        """Forget published messages beyond the retention window; returns how many."""

    def save_subscription(self, subscriber: Subscriber) -> None: ...

    def delete_subscription(self, subscriber_id: str) -> None: ...

    def subscriptions(self) -> list[Subscriber]:
        """The subscriptions to restore at start."""

    def close(self) -> None:
        """Write out whatever is pending and release the store."""


class MemoryStore:
    """In-process store: fast, lost with the process."""

    def __init__(self, retention_count: int = 10_000, retention_seconds: float = 3600) -> None:
        self._queue: deque[Message] = deque()
        self._unpublished: dict[str, Message] = {}
        self._unpublished_bytes = 0
        self._recent: OrderedDict[str, Message] = OrderedDict()
        self._retention_count = retention_count
        self._retention_seconds = retention_seconds
        self._last_seq = 0

    def last_seq(self) -> int:
        return self._last_seq

    def append(self, message: Message) -> None:
        self._queue.append(message)
        self._unpublished[message.id] = message
        self._unpublished_bytes += message.size
        self._last_seq = max(self._last_seq, message.seq)

    def head(self) -> Message | None:
        return self._queue[0] if self._queue else None

    def take_head(self) -> Message:
        return self._queue.popleft()

    def mark_published(self, message: Message) -> None:
        if self._unpublished.pop(message.id, None) is not None:
            self._unpublished_bytes -= message.size
        self._recent[message.id] = message
        while len(self._recent) > self._retention_count:
            self._recent.popitem(last=False)

    def mark_notified(self, message: Message) -> None:
        message.notified = True

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
        cutoff = time.time() - self._retention_seconds
        pruned = 0
        while self._recent:
            oldest = next(iter(self._recent.values()))
            if (oldest.published_at or 0) >= cutoff:
                break
            self._recent.popitem(last=False)
            pruned += 1
        return pruned

    def save_subscription(self, subscriber: Subscriber) -> None:
        pass

    def delete_subscription(self, subscriber_id: str) -> None:
        pass

    def subscriptions(self) -> list[Subscriber]:
        return []

    def close(self) -> None:
        pass


def open_store(
    settings: BrokerSettings, observe_write: Callable[[float], None] | None = None
) -> MessageStore:
    if settings.store == "memory":
        return MemoryStore(settings.retention_count, settings.retention_seconds)
    from broker.sqlite_store import SqliteStore

    return SqliteStore(
        settings.db_path,
        settings.retention_count,
        settings.retention_seconds,
        synchronous=settings.sqlite_synchronous,
        observe_write=observe_write,
    )
