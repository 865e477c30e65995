"""How a publisher hears that its message was published: the two kinds of `model.Reply`.

Both modes share the queue, the dispatcher and the lanes; they differ only here. A
`SyncReply` wakes the HTTP request that is still waiting; a `CallbackReply` has the
`CallbackNotifier` POST a notification to the publisher's callback, off the delivery path."""

from __future__ import annotations

import json
import logging

import gevent.event
import gevent.lock
import gevent.pool
from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

from broker.guard import CallbackGuard
from broker.model import Counters, Message
from broker.schemas import MessageStatus
from broker.storage.base import MessageStore
from groker_common.http import JSON_HEADERS, HttpPool
from groker_common.signatures import sign

log = logging.getLogger(__name__)


class SyncReply:
    """A sync publisher: its HTTP request waits (in its own greenlet) until woken."""

    def __init__(self) -> None:
        self._woken = gevent.event.Event()
        self.abandoned = False

    def on_published(self, message: Message) -> None:
        self._woken.set()

    def abandon(self) -> None:
        """The broker is stopping: answer now; the message stays queued in the store."""
        self.abandoned = True
        self._woken.set()

    def wait(self, timeout: float) -> bool:
        """Block this request's greenlet until published or abandoned (True), or the
        timeout (False)."""
        return self._woken.wait(timeout)


class CallbackReply:
    """An async publisher: told at its callback URL, if it gave one. Stateless, so one
    serves every async message (and every message recovered after a restart)."""

    def __init__(self, notifier: CallbackNotifier) -> None:
        self._notifier = notifier

    def on_published(self, message: Message) -> None:
        if message.callback:
            self._notifier.notify(message)


class CallbackNotifier:
    """Sends publish notifications off the delivery path: each in its own greenlet, a
    bounded number at a time, retried a few times, then logged and counted."""

    def __init__(
        self,
        http: HttpPool,
        guard: CallbackGuard,
        counters: Counters,
        attempts: int,
        timeout: float,
        secret: str | None,
        store: MessageStore,
        max_concurrent: int = 64,
    ) -> None:
        self._http = http
        self._guard = guard
        self._secret = secret
        self._store = store
        self._counters = counters
        self._attempts = attempts
        self._timeout = timeout
        self._slots = gevent.lock.BoundedSemaphore(max_concurrent)
        self._group = gevent.pool.Group()

    def notify(self, message: Message) -> None:
        self._group.spawn(
            self._send, message, json.dumps(MessageStatus.of(message).body()).encode()
        )

    def _send(self, message: Message, body: bytes) -> None:
        assert message.callback is not None
        url = message.callback
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=0.2, max=2),
            retry=retry_if_exception_type(OSError) | retry_if_result(lambda status: status >= 300),
            sleep=gevent.sleep,
        )
        with self._slots:
            try:
                self._guard.check(url)
                retrying(self._post, url, body, message.id)
            except Exception as exc:  # RetryError or the last attempt's own error
                self._counters.notifications_failed += 1
                log.warning(
                    "notification for %s to %s failed: %s",
                    message.id,
                    url,
                    exc,
                    extra={"message_id": message.id, "seq": message.seq},
                )
            else:
                self._counters.notifications_sent += 1
        self._store.mark_notified(message)

    def _post(self, url: str, body: bytes, message_id: str) -> int:
        headers = JSON_HEADERS
        if self._secret:
            headers = headers | sign(self._secret, message_id, body)
        try:
            status, _ = self._http.request("POST", url, body, headers, self._timeout)
        except Exception as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from exc
        return status

    def join(self, timeout: float | None = None) -> None:
        self._group.join(timeout)

    def close(self) -> None:
        self._group.kill(block=False)
