"""One ordered delivery lane per subscriber.

Each subscriber gets its own bounded queue and greenlet, so a slow or hung subscriber delays
only itself: the others keep receiving, and the dispatcher waits on a full lane at most as
long as it takes to give up on that subscriber (the delivery timeout). A subscriber that
takes batches (max_batch > 1) gets whatever its lane holds, up to max_batch, in one POST,
after waiting up to max_wait_ms for more."""

from __future__ import annotations

import logging
import time
from typing import Protocol

import gevent
import gevent.queue

from broker.delivery import Courier
from broker.errors import DeliveryFailed
from broker.model import Message, Subscriber
from broker.publication import Publication

log = logging.getLogger(__name__)


class Removal(Protocol):
    """Who takes a subscriber off the books when its lane gives up on it (the registry)."""

    def unsubscribe(self, subscriber_id: str, reason: str | None = None) -> bool: ...


class BaseLane:
    """What every lane is, wherever its deliveries are made (here, or on another replica:
    delegation.RemoteLane): its subscriber, its counts, and where it reports outcomes."""

    # In a cluster: the replica that delivers (delegation.py), shown on the dashboard.
    holder = ""

    def __init__(self, subscriber: Subscriber, publication: Publication) -> None:
        self.subscriber = subscriber
        self._publication = publication
        self.closed = False
        self.delivered = 0
        self.failed = 0
        # The lane taking over (delegation.HandOver): what is put here from then on goes
        # there, while this one delivers what it holds.
        self.successor: BaseLane | None = None

    @property
    def backlog(self) -> int:
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """Whether it holds a message it has not delivered (or failed) yet."""
        raise NotImplementedError

    @property
    def active(self) -> bool:
        """Whether it is the subscriber's lane still: neither closed nor handing over."""
        return not self.closed and self.successor is None

    def put(self, message: Message) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def retire(self) -> None:
        """Handed over (handover.py) and done: it stops, holding nothing."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The subscriber and how its lane is doing, for the dashboard."""
        described = {
            **self.subscriber.describe(),
            "backlog": self.backlog,
            "delivered": self.delivered,
            "failed": self.failed,
        }
        if self.holder:
            described["replica"] = self.holder
        return described

    def _resolve(self, message: Message, delivered: bool) -> None:
        if delivered:
            self.delivered += 1
        else:
            self.failed += 1
        self._publication.record(message, self.subscriber.id, delivered)


class HoldingLane(BaseLane):
    """A lane that holds each message put into it until it is done with it (its outcome is
    in, or it passed it on), at most `capacity` at once: then a put waits, as on a full
    lane. Once it has a successor, what is put goes there."""

    def __init__(self, subscriber: Subscriber, publication: Publication, capacity: int) -> None:
        super().__init__(subscriber, publication)
        self._capacity = capacity
        self._held: dict[int, Message] = {}  # by seq
        self._room = gevent.event.Event()
        self._room.set()

    @property
    def backlog(self) -> int:
        return len(self._held)

    @property
    def busy(self) -> bool:
        return bool(self._held)

    def put(self, message: Message) -> None:
        while len(self._held) >= self._capacity and not self.closed and not self.successor:
            self._room.clear()
            self._room.wait()
        if self.successor is not None:
            self.successor.put(message)
        elif self.closed:
            self._resolve(message, delivered=False)
        else:
            self._held[message.seq] = message
            self._took(message)

    def _took(self, message: Message) -> None:
        """What else taking a message means (a remote lane ships it)."""

    def _done_with(self, seq: int) -> Message | None:
        message = self._held.pop(seq, None)
        if len(self._held) < self._capacity:
            self._room.set()
        return message

    def _release(self) -> list[Message]:
        """Everything held, in seq order, held no more."""
        held, self._held = self._held, {}
        self._room.set()
        return [held[seq] for seq in sorted(held)]


class Lane(BaseLane):
    """Delivers one subscriber's messages in the order they were put, one (or one batch) at
    a time, and reports each outcome to the publication; gives up on the subscriber (and
    asks for its removal) when a delivery fails for good."""

    def __init__(
        self,
        subscriber: Subscriber,
        courier: Courier,
        capacity: int,
        publication: Publication,
        removal: Removal,
    ) -> None:
        super().__init__(subscriber, publication)
        self._courier = courier
        self.removal = removal
        self._queue: gevent.queue.Queue[Message] = gevent.queue.Queue(capacity)
        self._current: list[Message] = []  # the POST under way
        self._greenlet = gevent.spawn(self._run)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def ended(self) -> bool:
        """Its greenlet is over: it delivers nothing more (a delivery it was not allowed to
        make ends it, delivery.Courier.fence)."""
        return self._greenlet.dead

    @property
    def busy(self) -> bool:
        return bool(self._current) or not self._queue.empty()

    def put(self, message: Message) -> None:
        """Hand a message to this lane; blocks while the lane is full."""
        if self.successor is not None:
            self.successor.put(message)
            return
        if not self.closed:
            # Handed over while this waits for room, it still delivers this one: the lane
            # taking over waits until this one has delivered everything it holds.
            self._queue.put(message)
        if self.closed:
            # Closed before or while we waited for room: nobody will deliver it.
            self._drain()

    def close(self) -> None:
        """Stop delivering; whatever this lane still holds counts as failed for it."""
        if self.closed:
            return
        self.closed = True
        if self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)
        for message in self._current:
            self._resolve(message, delivered=False)
        self._drain()

    def abandon(self) -> None:
        """Stop delivering, quietly: what it holds is for another lane to deliver (a lane
        on a replica that gives it back, lane_host.py)."""
        self.closed = True
        if self._greenlet is not gevent.getcurrent():
            self._greenlet.kill(block=False)

    def retire(self) -> None:
        self.abandon()

    def _drain(self) -> None:
        while True:
            try:
                message = self._queue.get_nowait()
            except gevent.queue.Empty:
                return
            self._resolve(message, delivered=False)

    def _next(self) -> list[Message]:
        """The next message, or for a batch subscriber the next batch (blocks until one)."""
        first = self._queue.get()
        most, wait = self.subscriber.max_batch, self.subscriber.max_wait_ms / 1000
        if most == 1:
            return [first]
        batch = self._current = [first]  # busy while it waits for more
        deadline = time.monotonic() + wait
        while len(batch) < most:
            # What waits already, then what comes within max_wait_ms.
            left = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                )
            except gevent.queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while not self.closed:
            messages = self._current = self._next()
            try:
                status = self._courier.deliver(self.subscriber, messages)
            except DeliveryFailed as exc:
                self.removal.unsubscribe(self.subscriber.id, str(exc))
                return
            self._current = []
            if status >= 300:
                log.warning(
                    "subscriber %s refused seq %d-%d with HTTP %d",
                    self.subscriber.id,
                    messages[0].seq,
                    messages[-1].seq,
                    status,
                    extra={"message_id": messages[0].id, "seq": messages[0].seq},
                )
            for message in messages:
                self._resolve(message, delivered=status < 300)
