"""The owner's end of the cluster's inbox (inbox.py): it reads what the standbys took, accepts
each publish as its own, and tells them the answers and the publications they wait on."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import valkey

from broker.errors import BrokerError, KeyInUse, KeyReused
from broker.inbox import ANSWER_MS, Entry, Inbox, outcome_of, refusal
from broker.model import Message

if TYPE_CHECKING:
    from broker.core import Broker
    from broker.storage.valkey import ValkeyStore

log = logging.getLogger(__name__)

# How long one read of the inbox waits for an entry (the reader stops between reads).
BLOCK_MS = 1000


class Intake:
    """Reads the inbox from its start (what a previous owner left is taken first), for as
    long as its broker runs and does not drain."""

    def __init__(self, broker: Broker, inbox: Inbox, store: ValkeyStore) -> None:
        self._broker = broker
        self._inbox = inbox
        self._store = store
        self._reader: gevent.Greenlet | None = None
        self.taken = 0  # entries answered (the tests count them)

    def start(self) -> None:
        self._reader = gevent.spawn(self._read_forever)

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill()

    def _read_forever(self) -> None:
        after = "0-0"
        while not self._broker.draining and self._store.sound:
            try:
                entries = self._inbox.read(after, BLOCK_MS)
            except valkey.ValkeyError as exc:
                log.warning("cannot read the cluster's inbox: %s", exc)
                gevent.sleep(0.5)
                continue
            if entries:
                self._take(entries)
                after = entries[-1].entry_id

    def _take(self, entries: list[Entry]) -> None:
        """Accept the entries as publishes, side by side so that their writes share the
        store's batches; then take them out of the inbox, leaving their answers, in one
        fenced write, and say the answers."""
        # Started in inbox order, and none of them yields before its message has its seq
        # (the standbys checked the callbacks): the entries' messages keep the inbox's order.
        accepting = [gevent.spawn(self._accept, entry) for entry in entries]
        gevent.joinall(accepting)
        answers = {entry.ids[0]: g.value for entry, g in zip(entries, accepting, strict=True)}
        try:
            self._store.consume_inbox(
                [(entry.entry_id, self._inbox.answer_key(entry.ids[0]),
                  json.dumps(answers[entry.ids[0]]), ANSWER_MS) for entry in entries]
            )  # fmt: skip
        except BrokerError as exc:
            # The store writes no more; this replica hands the queue over (replica.py), and
            # the next owner takes the same entries again: each is then a replay.
            log.error("could not take %d entries out of the inbox: %s", len(entries), exc)
            return
        self.taken += len(entries)
        try:
            self._inbox.say({"answers": answers})
        except valkey.ValkeyError as exc:
            log.warning("could not say %d answers (they are looked up): %s", len(answers), exc)

    def _accept(self, entry: Entry) -> dict[str, Any]:
        try:
            messages, replayed = self._broker.accept_entry(entry)
        except (KeyReused, KeyInUse) as exc:
            return refusal(type(exc).__name__)  # no detail: it would be the scoped key
        except BrokerError as exc:
            return refusal(type(exc).__name__, str(exc))
        return outcome_of(messages, replayed)


class Announcer:
    """Says on the events channel which sync messages were published, for the standbys whose
    publishers wait on them: whatever was published while the last say was on its way goes
    out in the next."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._pending: list[list[Any]] = []
        self._wakeup = gevent.event.Event()
        self._sayer = gevent.spawn(self._say_forever)

    def __call__(self, message: Message) -> None:
        if message.mode == "sync":
            self._pending.append(
                [message.seq, message.published_at, message.delivered, message.failed]
            )
            self._wakeup.set()

    def _say_forever(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            published, self._pending = self._pending, []
            if not published:
                continue
            try:
                self._inbox.say({"published": published})
            except valkey.ValkeyError as exc:
                log.warning("could not announce %d publications: %s", len(published), exc)

    def stop(self) -> None:
        self._sayer.kill()
