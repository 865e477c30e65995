"""The owner's end of the cluster's inbox (inbox.py): it reads what the standbys took, accepts
each publish as its own, and tells them the answers and the publications they wait on."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.pool
import valkey

from broker.coalescing import Coalescer
from broker.errors import BrokerError, KeyInUse, KeyReused
from broker.inbox import ANSWER_MS, Entry, Inbox, outcome_of, refusal
from broker.model import Message

if TYPE_CHECKING:
    from broker.core import Broker

log = logging.getLogger(__name__)

# How long one read of the inbox waits for an entry (the reader stops between reads).
BLOCK_MS = 1000
# Entries being accepted at once, at most (each may be held by flow control).
ACCEPTING = 1000


class InboxStore(Protocol):
    """What the intake needs of the owner's store (storage/valkey.py has it)."""

    sound: bool

    def consume_inbox(self, consumed: list[tuple[str, str, str, int]]) -> None: ...


class Intake:
    """Reads the inbox from its start (what a previous owner left is taken first), for as
    long as its broker runs and does not drain. Each entry is accepted in a greenlet of its
    own, so that flow control holding one holds no other, and their writes share the
    store's batches; the answerer takes the accepted ones out of the inbox, leaving their
    answers, in one fenced write, then says their answers."""

    def __init__(self, broker: Broker, inbox: Inbox, store: InboxStore) -> None:
        self._broker = broker
        self._inbox = inbox
        self._store = store
        # At most this many entries being accepted: then the reader waits.
        self._accepting = gevent.pool.Pool(ACCEPTING)
        self._answers: Coalescer[tuple[Entry, dict[str, Any]]] = Coalescer(self._answer)
        self._reader: gevent.Greenlet | None = None

    def start(self) -> None:
        self._reader = gevent.spawn(self._read_forever)

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill()
        self._answers.stop()
        self._accepting.kill()

    def _read_forever(self) -> None:
        after = "0-0"
        while not self._broker.draining and self._store.sound:
            try:
                entries = self._inbox.read(after, BLOCK_MS)
            except valkey.ValkeyError as exc:
                log.warning("cannot read the cluster's inbox: %s", exc)
                gevent.sleep(0.5)
                continue
            # Started in inbox order, and none yields before its message has its seq (the
            # standbys checked the callbacks): their messages keep the inbox's order.
            for entry in entries:
                self._accepting.spawn(self._accept, entry)
            if entries:
                after = entries[-1].entry_id

    def _accept(self, entry: Entry) -> None:
        try:
            messages, replayed = self._broker.accept_entry(entry)
            answer = outcome_of(messages, replayed)
        except (KeyReused, KeyInUse) as exc:
            answer = refusal(type(exc).__name__)  # no detail: it would be the scoped key
        except BrokerError as exc:
            answer = refusal(type(exc).__name__, str(exc))
        self._answers.add((entry, answer))

    def _answer(self, answered: list[tuple[Entry, dict[str, Any]]]) -> None:
        """Take the entries out of the inbox, leaving their answers, then say them."""
        if not self._store.sound:
            return  # it refuses every write since one failed: the next owner answers them
        try:
            self._store.consume_inbox(
                [(entry.entry_id, self._inbox.answer_key(entry.ids[0]), json.dumps(answer),
                  ANSWER_MS) for entry, answer in answered]
            )  # fmt: skip
        except BrokerError as exc:
            # The store writes no more; this replica hands the queue over (replica.py),
            # and the next owner takes the same entries again: each is then a replay.
            log.error("could not take %d entries out of the inbox: %s", len(answered), exc)
            return
        answers = {entry.ids[0]: answer for entry, answer in answered}
        try:
            self._inbox.say({"answers": answers})
        except valkey.ValkeyError as exc:
            log.warning("could not say %d answers (they are looked up): %s", len(answers), exc)


class Announcer:
    """Says on the events channel which sync messages were published, for the standbys whose
    publishers wait on them: whatever was published while the last say was on its way goes
    out in the next."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._published: Coalescer[list[Any]] = Coalescer(self._say)

    def __call__(self, message: Message) -> None:
        if message.mode == "sync":
            self._published.add(
                [message.seq, message.published_at, message.delivered, message.failed]
            )

    def _say(self, published: list[list[Any]]) -> None:
        try:
            self._inbox.say({"published": published})
        except valkey.ValkeyError as exc:
            log.warning("could not announce %d publications: %s", len(published), exc)

    def stop(self) -> None:
        self._published.stop()
