"""Where a blocking client call runs: in the calling greenlet when gevent has patched the
socket module (a gunicorn gevent worker: the call then waits cooperatively), on a thread of
its own otherwise (the tests' processes, and C libraries such as sqlite3 that no patch
reaches). The thread costs a hand-over per call (a queue, a wakeup, the GIL twice); a
Valkey owner makes several such calls per batch of publishes, so where it is not needed it
is not paid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent.lock
from gevent.monkey import is_module_patched
from gevent.threadpool import ThreadPool

T = TypeVar("T")


def sockets_cooperative() -> bool:
    return bool(is_module_patched("socket"))


class Blocking:
    """Runs calls one at a time, as one thread would: inline under a lock when they only
    wait on sockets (`sockets_only`) and those are cooperative, else on a thread of its
    own."""

    def __init__(self, sockets_only: bool = True) -> None:
        self.inline = sockets_only and sockets_cooperative()
        self._lock = gevent.lock.Semaphore()
        self._thread = None if self.inline else ThreadPool(1)

    def apply(self, fn: Callable[..., T], args: tuple[Any, ...] = (), kwargs: Any = None) -> T:
        if self._thread is not None:
            return self._thread.apply(fn, args, kwargs)
        with self._lock:
            return fn(*args, **(kwargs or {}))

    def kill(self) -> None:
        if self._thread is not None:
            self._thread.kill()
