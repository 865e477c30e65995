"""One greenlet sending what others add, in batches: whatever is added while a batch is on
its way goes in the next. Nothing waits for a batch to fill (an item added to an idle
sender goes at once), so batches grow only when items come faster than one send takes.

The cluster's messages between replicas go this way (GROKER_STORE=valkey): a standby's
publishes into the inbox (inbox.py), the intake's answers and the announcements of
publications (intake.py), the owner's shipments of lanes' work (delegation.py) and the
replicas' reports of their outcomes (lane_host.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
import gevent.event

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Calls `send` with every item added, in the order added, a batch at a time. `send`
    handles its own failures (it may hand the batch back: `again`)."""

    def __init__(self, send: Callable[[list[T]], None]) -> None:
        # Added to, not yet sent: the newest item may still be changed in place.
        self.pending: list[T] = []
        self._send = send
        self._wakeup = gevent.event.Event()
        self._greenlet = gevent.spawn(self._send_forever)

    def add(self, item: T) -> None:
        self.pending.append(item)
        self._wakeup.set()

    def again(self, items: list[T], after: float) -> None:
        """From `send`, for a batch that did not go: sent first in a batch `after` seconds
        from now (meanwhile nothing is sent)."""
        self.pending = items + self.pending
        gevent.sleep(after)
        self._wakeup.set()

    def take(self) -> list[T]:
        """What is pending, taken out: this sender no longer sends it."""
        items, self.pending = self.pending, []
        return items

    def _send_forever(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            items = self.take()
            if items:
                self._send(items)

    def stop(self) -> None:
        self._greenlet.kill(block=False)
