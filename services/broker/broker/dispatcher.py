"""Moves messages from the head of the queue into the subscribers' lanes, in seq order."""

from __future__ import annotations

import logging

import gevent
import gevent.event

from broker.registry import SubscriberRegistry
from broker.storage.base import MessageStore

log = logging.getLogger(__name__)


class Dispatcher:
    """One greenlet: while there is a queued message and at least one subscriber, take the
    head, fix its delivery set (the subscribers present now) and hand it to their lanes.

    Handing over, not waiting for delivery: each lane delivers in order on its own, so a
    slow subscriber holds back only itself (and the dispatcher only while its lane is full).
    """

    def __init__(
        self, store: MessageStore, registry: SubscriberRegistry, backlog: int = 1000
    ) -> None:
        self._store = store
        self._registry = registry
        self._wakeup = gevent.event.Event()
        self._backlog = backlog
        self._room = gevent.event.Event()
        self._room.set()
        self._greenlet: gevent.Greenlet | None = None
        self._paused = False

    def wake(self) -> None:
        """Something changed: a message was queued or a subscriber joined."""
        self._wakeup.set()

    def wait_for_room(self, timeout: float) -> None:
        """Flow control: with subscribers present and more than `backlog` messages not yet
        handed to their lanes, hold the publisher (up to `timeout`) until the lanes catch up.
        In one gevent process, publishers that are never held take the CPU the lanes need
        to deliver, and the queue grows until it is full; held, they get it back."""
        if self._store.queued() <= self._backlog or not len(self._registry):
            return
        self._room.clear()
        self._room.wait(timeout)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def pause(self) -> None:
        """Take nothing more from the queue (the broker is stopping: what is queued stays
        in the store for the next start). A hand-over under way completes."""
        self._paused = True

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()

    def _run(self) -> None:
        while True:
            message = self._store.head()
            lanes = self._registry.lanes()
            if message is None or not lanes or self._paused:
                self._room.set()  # nothing moves: do not hold publishers for it
                # Cooperative scheduling: nothing ran between the check and the clear,
                # so a wake() cannot be lost here.
                self._wakeup.clear()
                self._wakeup.wait()
                continue
            self._store.take_head()
            if self._store.queued() <= self._backlog // 2:
                self._room.set()
            message.begin_publication([lane.subscriber.id for lane in lanes])
            for lane in lanes:
                lane.put(message)
