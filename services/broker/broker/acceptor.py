"""Publishing through a standby replica (inbox.py says how the cluster's inbox works).

`Acceptor` stands in for `Broker` on the publish routes of a replica that does not own the
queue: it checks what the broker checks before a message is made (draining, the callback's
destination), puts the publish into the inbox, and answers with what the owner made of it.
A sync publisher then waits here for its messages' publication, which the owner announces."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import gevent
import gevent.event
import valkey

from broker import errors
from broker.errors import NotSequenced, StoreError
from broker.guard import CallbackGuard
from broker.inbox import Entry, Inbox
from broker.model import Item, Message, Mode, WaitResult
from broker.publishing import Publishing
from broker.settings import BrokerSettings

log = logging.getLogger(__name__)

# Seconds a waiter trusts the events channel before it looks the answer up itself.
LOOK_AFTER = 1.0
# The refusals an owner may answer with, by name (errors.py); any other is a store error.
REFUSALS: dict[str, type[errors.BrokerError]] = {
    cls.__name__: cls
    for cls in (
        errors.QueueFull,
        errors.Draining,
        StoreError,
        errors.KeyReused,
        errors.KeyInUse,
        errors.RefusedDestination,
    )
}


class _Awaited:
    """Something a request waits to hear of: an entry's answer, or a publication."""

    def __init__(self) -> None:
        self.heard = gevent.event.Event()
        self.value: Any = None
        self.abandoned = False

    def set(self, value: Any) -> None:
        self.value = value
        self.heard.set()


class Acceptor(Publishing):
    def __init__(self, settings: BrokerSettings, inbox: Inbox, guard: CallbackGuard) -> None:
        self.settings = settings
        self._inbox = inbox
        self.guard = guard
        self._answers: dict[str, _Awaited] = {}  # by the first message id of the entry
        self._publications: dict[int, list[_Awaited]] = {}  # by seq
        self.draining = False
        self._listener = gevent.spawn(inbox.listen, self._heard, self._lost)

    def wait_published(self, message: Message, timeout: float | None = None) -> WaitResult:
        """Hold a sync publisher until the owner says its message is published."""
        if message.status == "published":
            return "published"
        if self.draining:
            return "draining"
        awaited = _Awaited()
        self._publications.setdefault(message.seq, []).append(awaited)
        try:
            outcome = self._wait(
                awaited,
                self.settings.sync_timeout if timeout is None else timeout,
                lambda: self._look(self._inbox.published, message.seq),
            )
        finally:
            waiting = self._publications.get(message.seq, [])
            if awaited in waiting:
                waiting.remove(awaited)
            if not waiting:
                self._publications.pop(message.seq, None)
        if outcome is not None:
            published_at, message.delivered, message.failed = outcome
            message.published_at, message.status = published_at, "published"
            return "published"
        return "draining" if awaited.abandoned else "timeout"

    def drain(self) -> None:
        """Stopping: refuse new publishes, and answer the sync publishers waiting for a
        publication now (their messages are accepted: the owner publishes them). Those
        waiting for the owner's answer wait on: their publishes are in the inbox."""
        self.draining = True
        for waiting in list(self._publications.values()):
            for awaited in waiting:
                awaited.abandoned = True
                awaited.heard.set()

    def close(self) -> None:
        self._listener.kill()
        self._inbox.close()

    # --- the inbox -----------------------------------------------------------------------
    def _admit(
        self,
        encoded: list[Item],
        mode: Mode,
        callback: str | None,
        key: str | None,
        batch: bool,
        attributes: list[dict[str, Any]] | None,
    ) -> tuple[list[Message], bool]:
        entry = Entry(
            ids=[str(uuid.uuid4()) for _ in encoded],
            items=encoded,
            mode=mode,
            callback=callback,
            key=key if key is not None else f"inbox/{uuid.uuid4().hex}",
            batch=batch,
            accepted_at=time.time(),
            attributes=attributes,
        )
        first = entry.ids[0]
        awaited = self._answers[first] = _Awaited()
        try:
            try:
                self._inbox.put(entry)
            except valkey.ValkeyError as exc:
                # Not in the inbox (or, if the connection broke after the write, an entry
                # with a key of its own: its publisher's retry with the key is a replay).
                raise StoreError(f"cannot reach Valkey: {exc}") from exc
            answer = self._wait(
                awaited, self.settings.sync_timeout, lambda: self._look(self._inbox.answer, first)
            )
        finally:
            del self._answers[first]
        if answer is None:
            raise NotSequenced(entry.ids)
        if "error" in answer:
            refusal = REFUSALS.get(answer["error"], StoreError)
            raise refusal(answer.get("detail") or answer["error"])
        messages = [_message(body, mode) for body in answer["messages"]]
        return messages, bool(answer["replayed"])

    def _wait(self, awaited: _Awaited, timeout: float, look: Any) -> Any:
        """What `awaited` hears within `timeout`, or, every LOOK_AFTER without a word,
        what `look()` finds (an event may be lost); None if neither says anything."""
        deadline = time.monotonic() + timeout
        while not awaited.abandoned:
            left = deadline - time.monotonic()
            if awaited.heard.wait(max(0.0, min(LOOK_AFTER, left))):
                return None if awaited.abandoned else awaited.value
            found = look()
            if found is not None or left <= LOOK_AFTER:
                return found
        return None

    def _heard(self, text: str) -> None:
        if not self._answers and not self._publications:
            return  # nobody waits here (the owner's own acceptor, say): not worth reading
        event = json.loads(text)
        for first, answer in event.get("answers", {}).items():
            awaited = self._answers.get(first)
            if awaited is not None:
                awaited.set(answer)
        for seq, published_at, delivered, failed in event.get("published", []):
            for awaited in self._publications.get(seq, []):
                awaited.set((published_at, delivered, failed))

    def _look(self, lookup: Any, what: str | int) -> Any:
        """`lookup(what)`: what a waiter did not hear of (an entry's answer, a publication);
        None if there is none yet, or Valkey cannot say."""
        try:
            return lookup(what)
        except valkey.ValkeyError as exc:
            log.warning("cannot look up %r: %s", what, exc)
            return None

    def _lost(self) -> None:
        log.warning("events may have been missed: waiting publishers look their answers up")


def _message(status: dict[str, Any], mode: Mode) -> Message:
    """A message as the owner's answer describes it: enough for `MessageStatus.of`."""
    message = Message(id=status["id"], seq=status["seq"], body_json="", mode=mode)
    if status["status"] == "published":
        message.status = "published"
        message.published_at = status.get("published_at")
        message.delivered = status.get("delivered") or 0
        message.failed = status.get("failed") or 0
    return message
