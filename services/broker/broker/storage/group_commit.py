"""Group commit, the write half the durable backends share.

Every write goes to one writer (database clients block, and would stall every greenlet if
called from the hub: a thread of its own, or, for a client that only waits on sockets
where gevent patched them, the flushing greenlet; blocking.py) in batches: whatever
accumulated while the previous commit ran is committed together, so concurrent publishes
share one round trip and one fsync. A waiting writer hears back only after the batch
holding its operation has committed; an appended message is handed out only then, and a
failed batch takes its messages out of the index again (refused means never published)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import gevent
import gevent.event

from broker.errors import StoreError
from broker.model import Message
from broker.storage.blocking import Blocking
from broker.storage.index import QueueIndex

log = logging.getLogger(__name__)

Op = TypeVar("Op")
T = TypeVar("T")


class GroupCommit(Generic[Op]):
    """Batches operations for `commit`, which runs on the writer and applies a whole
    batch or raises."""

    def __init__(
        self,
        commit: Callable[[list[Op]], None],
        index: QueueIndex,
        observe_write: Callable[[float], None] | None = None,
        sockets_only: bool = False,
    ) -> None:
        self._commit = commit
        self._index = index
        self._observe_write = observe_write
        # `sockets_only`: `commit` only waits on sockets, so where gevent patched them it
        # needs no thread of its own (blocking.py).
        self._writer = Blocking(sockets_only)
        self._pending: list[Op] = []
        self._pending_done = gevent.event.AsyncResult()
        # The messages the pending batch appends: its outcome decides theirs.
        self._appended: list[Message] = []
        self._wakeup = gevent.event.Event()
        self._closed = False
        self.batches = 0
        self._flusher = gevent.spawn(self._flush_forever)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (opening, reading at start) on the writer."""
        return self._writer.apply(fn, args)

    def submit(self, op: Op, wait: bool, appended: Message | None = None) -> None:
        """Queue `op` for the next batch; with `wait`, return once it has committed (raises
        StoreError if it did not). `appended`: the message whose row `op` writes."""
        self._pending.append(op)
        if appended is not None:
            self._appended.append(appended)
        done = self._pending_done
        self._wakeup.set()
        if wait:
            try:
                done.get()
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(str(exc)) from exc

    def _flush_forever(self) -> None:
        while not self._closed:
            self._wakeup.wait()
            self._wakeup.clear()
            self._flush()

    def _flush(self) -> None:
        while self._pending:
            ops, done, appended = self._pending, self._pending_done, self._appended
            self._pending, self._pending_done = [], gevent.event.AsyncResult()
            self._appended = []
            began = time.perf_counter()
            try:
                self._writer.apply(self._commit, (ops,))
            except Exception as exc:
                log.error("store write of %d operations failed: %s", len(ops), exc)
                # Here, not in the publishers' greenlets: one that is killed while it waits
                # must not leave its message blocking the head of the queue.
                for message in appended:
                    self._index.forget(message)
                done.set_exception(exc)
            else:
                for message in appended:
                    self._index.committed(message)
                self.batches += 1
                if self._observe_write is not None:
                    self._observe_write(time.perf_counter() - began)
                done.set(None)

    def close(self, release: Callable[[], None] | None = None) -> None:
        """Commit what is pending (finishing a batch under way first), run `release` on the
        writer thread, then stop it."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        self._flusher.join(timeout=30)
        self._flush()
        try:
            if release is not None:
                self._writer.apply(release)
        finally:
            self._writer.kill()
