"""What the publish routes call, the same on the broker (core.py) and on a standby's
acceptor (acceptor.py): a message or a batch, with an idempotency key or without, and a
wait for a sync batch. Each of the two says how it accepts (`_accept`) and how a sync
publisher waits for one message (`wait_published`)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

from broker.errors import Draining
from broker.guard import CallbackGuard
from broker.model import Item, Message, Mode, WaitResult, encode_body
from broker.settings import BrokerSettings

# A batch's items as given: (body, headers).
Items = list[tuple[Any, dict[str, str] | None]]


class Publishing(ABC):
    settings: BrokerSettings
    guard: CallbackGuard
    draining: bool

    def publish_once(
        self,
        key: str | None,
        body: Any,
        mode: Mode = "async",
        headers: dict[str, str] | None = None,
        callback: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> tuple[Message, bool]:
        """Publish with an idempotency key (already scoped to the publisher): the same key
        with the same request, within `idempotency_seconds` and while the message is
        kept, returns the first message and True (replayed) instead of a new one. Without
        a key, never replayed. With `attributes`, the message is a published CloudEvent
        (cloudevents.py)."""
        one = None if attributes is None else [attributes]
        messages, replayed = self._accept([(body, headers)], mode, callback, key, False, one)
        return messages[0], replayed

    def publish_batch(
        self,
        items: Items,
        mode: Mode = "async",
        callback: str | None = None,
        key: str | None = None,
        attributes: list[dict[str, Any]] | None = None,
    ) -> tuple[list[Message], bool]:
        """Accept (body, headers) items as messages of consecutive seqs, in the order given,
        in one durable write: all of them or none. With a key, as `publish_once`, for the
        whole batch. With `attributes`, one for each item, in order, the items are published
        CloudEvents (a CloudEvents batch)."""
        if attributes is not None and len(attributes) != len(items):
            raise ValueError("one attributes mapping for each item")
        return self._accept(items, mode, callback, key, True, attributes)

    def wait_all_published(self, messages: list[Message]) -> WaitResult:
        """Hold a sync publisher of a batch until all of it is published, within one sync
        timeout for the whole batch."""
        deadline = time.monotonic() + self.settings.sync_timeout
        for message in messages:
            outcome = self.wait_published(message, max(0.0, deadline - time.monotonic()))
            if outcome != "published":
                return outcome
        return "published"

    @abstractmethod
    def wait_published(self, message: Message, timeout: float | None = None) -> WaitResult:
        """Hold a sync publisher until its message is published (or we stop, or time out)."""

    def _accept(
        self,
        items: Items,
        mode: Mode,
        callback: str | None,
        key: str | None,
        batch: bool,
        attributes: list[dict[str, Any]] | None,
    ) -> tuple[list[Message], bool]:
        """What both check before a message is made (stopping, the callback's destination),
        then the bodies encoded once for `_admit`."""
        if self.draining:
            raise Draining()
        if callback is not None:
            self.guard.check(callback)
        encoded: list[Item] = [(encode_body(body), headers or None) for body, headers in items]
        return self._admit(encoded, mode, callback, key, batch, attributes)

    @abstractmethod
    def _admit(
        self,
        encoded: list[Item],
        mode: Mode,
        callback: str | None,
        key: str | None,
        batch: bool,
        attributes: list[dict[str, Any]] | None,
    ) -> tuple[list[Message], bool]:
        """Make the items messages, in order, in one durable write; with a key, the messages
        it already stands for if it came with this request before (True: replayed)."""
