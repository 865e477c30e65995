"""Where accepted messages wait. The broker talks to a `MessageStore`; `MemoryStore` is the
one implementation today, and a durable store can take its place behind the same methods."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Protocol

from broker.messages import Message


class MessageStore(Protocol):
    def last_seq(self) -> int:
        """The highest seq ever accepted (0 for an empty store), so seq never repeats."""

    def append(self, message: Message) -> None:
        """Keep an accepted message at the tail of the queue."""

    def head(self) -> Message | None:
        """The oldest message not yet taken for publication, without taking it."""

    def take_head(self) -> Message:
        """Take the head for publication; it stays unpublished until `mark_published`."""

    def mark_published(self, message: Message) -> None: ...

    def get(self, message_id: str) -> Message | None:
        """An unpublished message, or a recently published one."""

    def queued(self) -> int:
        """Messages waiting for publication to begin."""

    def unpublished(self) -> int:
        """Messages accepted and not yet published: the queue plus those being delivered."""


class MemoryStore:
    """In-process store: fast, lost with the process."""

    def __init__(self, retention_count: int = 10_000) -> None:
        self._queue: deque[Message] = deque()
        self._unpublished: dict[str, Message] = {}
        self._recent: OrderedDict[str, Message] = OrderedDict()
        self._retention_count = retention_count
        self._last_seq = 0

    def last_seq(self) -> int:
        return self._last_seq

    def append(self, message: Message) -> None:
        self._queue.append(message)
        self._unpublished[message.id] = message
        self._last_seq = max(self._last_seq, message.seq)

    def head(self) -> Message | None:
        return self._queue[0] if self._queue else None

    def take_head(self) -> Message:
        return self._queue.popleft()

    def mark_published(self, message: Message) -> None:
        self._unpublished.pop(message.id, None)
        self._recent[message.id] = message
        while len(self._recent) > self._retention_count:
            self._recent.popitem(last=False)

    def get(self, message_id: str) -> Message | None:
        return self._unpublished.get(message_id) or self._recent.get(message_id)

    def queued(self) -> int:
        return len(self._queue)

    def unpublished(self) -> int:
        return len(self._unpublished)
