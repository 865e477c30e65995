"""What the broker asks of a storage backend.

A backend keeps two things: the queue of accepted messages (with the recently published
ones, for GET /messages/<id>), and the subscriptions. `Store` is both; a backend is one
class implementing it, in its own module, listed in `storage/__init__.py`."""

from __future__ import annotations

from typing import Protocol

from broker.errors import StoreError
from broker.model import Message, Subscriber

__all__ = ["MessageStore", "Store", "StoreError", "SubscriptionStore"]


class MessageStore(Protocol):
    """The queue: messages in seq order, from accepted to published to pruned."""

    def last_seq(self) -> int:
        """The highest seq ever accepted (0 for an empty store), so seq never repeats."""

    def append(self, message: Message) -> None:
        """Put an accepted message at the tail of the queue; returns once it is durable.
        Raises StoreError when it cannot be made durable."""

    def append_all(self, messages: list[Message]) -> None:
        """Append messages of consecutive seqs (a batch) in one durable write: all of them
        or, raising StoreError, none."""

    def head(self) -> Message | None:
        """The oldest message not yet taken for publication, without taking it."""

    def take_head(self) -> Message:
        """Take the head for publication; it stays unpublished until `mark_published`."""

    def mark_published(self, message: Message) -> None:
        """Every member of the message's delivery set is done: keep it as published (for
        GET and retention), and no longer count it against the queue's bounds."""

    def mark_notified(self, message: Message) -> None:
        """The publisher's callback was told (or given up on): not to be sent again."""

    def get(self, message_id: str) -> Message | None:
        """An unpublished message, or a recently published one; None if unknown or pruned."""

    def by_key(self, key: str) -> Message | None:
        """The newest message accepted with this (scoped) idempotency key, while the store
        keeps it (as long as `get` answers for it); None otherwise."""

    def durable(self, message: Message) -> bool:
        """Whether the message's `append` has committed (False while it is being written)."""

    def queued(self) -> int:
        """Messages waiting for publication to begin."""

    def unpublished(self) -> int:
        """Messages accepted and not yet published: the queue plus those being delivered."""

    def unpublished_bytes(self) -> int:
        """Their total `Message.size`, for the queue's memory bound."""

    def unpublished_messages(self) -> list[Message]:
        """Every unpublished message, in seq order (to give them replies after a restart)."""

    def unnotified_messages(self) -> list[Message]:
        """Published messages whose callback has not been told yet (after a restart)."""

    def oldest_queued_at(self) -> float | None:
        """When the head of the queue was accepted; None for an empty queue."""

    def recent(self, limit: int) -> list[Message]:
        """The newest messages, published or not, newest first."""

    def prune(self) -> int:
        """Forget published messages beyond the retention window; returns how many."""


class SubscriptionStore(Protocol):
    """The subscriptions, so that a restarted broker keeps its subscribers."""

    def save_subscription(self, subscriber: Subscriber) -> None:
        """Keep a new subscription; returns once it is durable."""

    def delete_subscription(self, subscriber_id: str) -> None:
        """Forget a subscription (unknown ids are ignored)."""

    def subscriptions(self) -> list[Subscriber]:
        """The subscriptions to restore at start."""


class Store(MessageStore, SubscriptionStore, Protocol):
    """A whole backend: the queue and the subscriptions, released together."""

    # False once this process can no longer tell what the store holds: a write to a shared
    # store failed and may have been applied all the same. Such a store writes nothing
    # more, and its replica starts over from the store (replica.py).
    sound: bool

    def close(self) -> None:
        """Write out whatever is pending and release the store."""
