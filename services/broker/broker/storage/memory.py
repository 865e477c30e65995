"""The in-process backend: fast, and lost with the process (for tests and demos)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.model import Message, Subscriber
from broker.storage.index import QueueIndex, ServedFromIndex

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


class MemoryStore(ServedFromIndex):
    """Keeps the queue and the subscriptions in this process only."""

    def __init__(self, retention_count: int = 10_000, retention_seconds: float = 3600) -> None:
        self._index = QueueIndex(retention_count, retention_seconds)
        self._subscriptions: dict[str, Subscriber] = {}

    @classmethod
    def from_settings(cls, settings: BrokerSettings, **_: object) -> MemoryStore:
        return cls(settings.retention_count, settings.retention_seconds)

    def append(self, message: Message) -> None:
        self._index.append(message)

    def append_all(self, messages: list[Message]) -> None:
        for message in messages:
            self._index.append(message)

    def mark_published(self, message: Message) -> None:
        self._index.mark_published(message)

    def mark_notified(self, message: Message) -> None:
        message.notified = True

    def prune(self) -> int:
        return self._index.prune()

    def save_subscription(self, subscriber: Subscriber) -> None:
        self._subscriptions[subscriber.id] = subscriber

    def delete_subscription(self, subscriber_id: str) -> None:
        self._subscriptions.pop(subscriber_id, None)

    def subscriptions(self) -> list[Subscriber]:
        return list(self._subscriptions.values())

    def close(self) -> None:
        pass
