"""A subscriber's lane on its way to another replica (GROKER_STORE=valkey): the owner moves a
lane when one replica holds two more than another, a replica that joined holding none, say
(delegation.Delegation._rebalance).

The lane that delivered so far goes on until it has delivered everything it holds; what the
dispatcher puts meanwhile waits here, and only then does the new lane open and get it, in
seq order. So the subscriber never gets a message before an older one, and nothing twice,
unless the old lane's replica is gone meanwhile: what it had out is then delivered again
first (adopt), as when any lane moves."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import gevent

from broker.lanes import BaseLane, HoldingLane
from broker.model import Message
from broker.publication import Publication

log = logging.getLogger(__name__)

# Seconds between looks at whether the old lane has delivered everything it holds.
POLL = 0.05


class Registry(Protocol):
    def replace(self, subscriber_id: str, lane: BaseLane, instead_of: BaseLane) -> None: ...


class HandOver(HoldingLane):
    """Stands in the registry for the subscriber's lane while it moves: keeps what is put
    into it (at most `capacity`: then the dispatcher waits, as on a full lane) until `old`
    is done, then opens the new lane (`open_new`), passes it all on and steps aside."""

    def __init__(
        self,
        old: BaseLane,
        open_new: Callable[[], BaseLane],
        capacity: int,
        publication: Publication,
        registry: Registry,
    ) -> None:
        super().__init__(old.subscriber, publication, capacity)
        self.holder = old.holder
        self._old = old
        self._open_new = open_new
        self._registry = registry
        self._passing: Message | None = None
        old.successor = self
        registry.replace(old.subscriber.id, self, instead_of=old)
        self._greenlet = gevent.spawn(self._run)

    @property
    def backlog(self) -> int:
        return len(self._held) + self._old.backlog

    @property
    def busy(self) -> bool:
        return bool(self._held) or self._passing is not None or self._old.busy

    @property
    def done(self) -> bool:
        return self._greenlet.dead

    def adopt(self, messages: list[Message]) -> None:
        """What the old lane had out when its replica went: they come before everything
        held here, and go to the new lane first."""
        for message in messages:
            self._held[message.seq] = message

    def close(self) -> None:
        """Unsubscribed, removed, or the broker stops: what it holds counts as failed,
        and so does what the old lane holds."""
        if self.closed:
            return
        self.closed = True
        for message in self._release():
            self._resolve(message, delivered=False)
        self._old.close()

    def retire(self) -> None:
        """Never asked of a hand-over: it steps aside by itself."""

    def _run(self) -> None:
        while self._old.busy and not self.closed:
            gevent.sleep(POLL)
        if self.closed:
            return
        new = self._open_new()
        while self._held and not self.closed:
            self._passing = self._done_with(min(self._held))
            new.put(self._passing)  # may wait for room; more may come meanwhile
            self._passing = None
        if self.closed:
            new.close()
            return
        # Nothing held, and this greenlet does not yield from here on: whatever the
        # dispatcher puts next goes to the new lane, after everything before it.
        new.delivered += self._old.delivered
        new.failed += self._old.failed + self.failed
        self.successor = new
        self._registry.replace(self.subscriber.id, new, instead_of=self)
        self._old.retire()
        self._room.set()
        log.info("lane of %s moved from %s to %s", self.subscriber.id, self.holder, new.holder)
