"""The cluster's inbox (GROKER_STORE=valkey): how a publish taken by any replica reaches the
owner of the queue, and how its answer comes back.

Only the owner sequences messages (gives each its seq, in one order for all) and writes the
queue, fenced by its lease (storage/lease.py); every replica takes publishes all the same,
so that the costly part of a publish, its HTTP request, is spread over all of them:

1. A standby checks the request as the owner would (routes.py, acceptor.py), then adds it
   to `{prefix}:inbox`, a Valkey stream: durable once XADD answers (Valkey fsyncs every
   write), so it survives any replica's crash.
2. The owner reads the inbox (intake.py) and accepts each entry as if it had been published
   to it: the same idempotency keys, bounds and durable write. Then, in one fenced write of
   its store, it takes the entries out of the inbox and leaves each one's answer under
   `{prefix}:answer:<entry>` for a while (ANSWER_MS), and says the answers on
   `{prefix}:events`, where the standbys listen.
3. The standby answers its publisher with the owner's answer: the messages' ids and seqs.
   A sync publish then waits for its messages' publication, which the owner also says on
   `{prefix}:events`. Pub/sub may lose a message (a broken connection): a waiter that hears
   nothing for a second looks the answer up instead (`answer`, `published`).

Every entry carries an idempotency key, its publisher's or one made for it, so that an entry
read twice (an owner died between accepting it and taking it out of the inbox) is one
message: the next owner's answer to it is a replay."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import valkey

from broker.coalescing import Coalescer
from broker.model import Item, Message, Mode
from broker.schemas import MessageStatus
from broker.storage.blocking import Blocking
from broker.storage.valkey_client import StreamReader, ValkeyTarget

log = logging.getLogger(__name__)

# How long the owner keeps an entry's answer for a standby that missed it on pub/sub.
ANSWER_MS = 120_000
# Entries the owner reads at once (its publishes of one read share its store's writes).
READ_COUNT = 500
SOCKET_TIMEOUT = 10.0


@dataclass
class Entry:
    """A publish as a standby took it: what the owner needs to accept it (`Broker._accept`),
    with the ids and the time of acceptance the standby already gave it."""

    ids: list[str]
    items: list[Item]
    mode: Mode
    callback: str | None
    key: str
    batch: bool
    accepted_at: float
    attributes: list[dict[str, Any]] | None = None
    # Set by `Inbox.read`: the stream's id for it.
    entry_id: str = field(default="", compare=False)

    def encode(self) -> str:
        return json.dumps(
            {
                "ids": self.ids,
                "items": self.items,
                "mode": self.mode,
                "callback": self.callback,
                "key": self.key,
                "batch": self.batch,
                "accepted_at": self.accepted_at,
                "attributes": self.attributes,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, entry_id: str, text: str) -> Entry:
        fields = json.loads(text)
        fields["items"] = [(body, headers) for body, headers in fields["items"]]
        return cls(entry_id=entry_id, **fields)


def outcome_of(messages: list[Message], replayed: bool) -> dict[str, Any]:
    """An accepted entry's answer: what its publisher is told (`MessageStatus` bodies)."""
    return {"messages": [MessageStatus.of(m).body() for m in messages], "replayed": replayed}


def refusal(error: str, detail: str = "") -> dict[str, Any]:
    """A refused entry's answer: the name of the refusal (errors.py) and why."""
    return {"error": error, "detail": detail}


class Inbox:
    """The inbox's keys and channel, for both ends: a standby's `put`, the owner's `read`,
    everyone's `listen`.

    The two calls that wait (a blocking read, pub/sub) each have a connection of their own,
    made and used there only, and run where a greenlet waiting on them holds up no other
    (blocking.py): in that greenlet where sockets are monkey-patched (a gunicorn gevent
    worker), on a thread of their own where they are not (the tests' processes). The
    short calls are made from the calling greenlet."""

    def __init__(self, target: ValkeyTarget | str, prefix: str) -> None:
        if isinstance(target, str):
            target = ValkeyTarget(target)
        self.stream = f"{{{prefix}}}:inbox"
        self.channel = f"{{{prefix}}}:events"
        self._answer = f"{{{prefix}}}:answer:"
        self._outcomes = f"{{{prefix}}}:outcomes"
        # Clients connect lazily: the waiting ones on their threads.
        self._client = target.client(SOCKET_TIMEOUT, 2.0)
        self._reader = StreamReader(target, SOCKET_TIMEOUT + 5, READ_COUNT)
        self._listener = target.client(SOCKET_TIMEOUT, 2.0)
        self._listening = Blocking()
        self._pubsub: Any = None  # the listening thread's subscription
        self._puts: Coalescer[tuple[str, gevent.event.AsyncResult]] = Coalescer(self._put_all)
        self.put_round_trips = 0  # (the tests count them)

    def put(self, entry: Entry) -> str:
        """Add an entry; once this returns it is durable in Valkey. Returns its id.

        The entries put while one round trip is on its way go in the next, pipelined: a
        standby taking many publishes at once then makes a few round trips, not one each,
        and the owner reads them in a few reads."""
        done: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._puts.add((entry.encode(), done))
        return str(done.get())

    def _put_all(self, puts: list[tuple[str, gevent.event.AsyncResult]]) -> None:
        self.put_round_trips += 1
        pipe = self._client.pipeline(transaction=False)
        for text, _ in puts:
            pipe.xadd(self.stream, {"e": text})
        try:
            ids = pipe.execute()
        except Exception as exc:  # theirs to raise: the sender must go on
            # Some may be written all the same: each carries a key (see Entry).
            for _, done in puts:
                done.set_exception(exc)
        else:
            for (_, done), entry_id in zip(puts, ids, strict=True):
                done.set(entry_id)

    def read(self, after: str, block_ms: int) -> list[Entry]:
        """Entries after `after` ("0-0": every one), waiting up to `block_ms` for one."""
        return [
            Entry.decode(entry_id, fields["e"])
            for entry_id, fields in self._reader.read(self.stream, after, block_ms)
        ]

    def answer_key(self, first_id: str) -> str:
        """Where the owner leaves the answer to the entry whose first message is `first_id`."""
        return self._answer + first_id

    def answer(self, first_id: str) -> dict[str, Any] | None:
        """The answer the owner left for an entry, if it has answered it (and kept it)."""
        text = self._client.get(self.answer_key(first_id))
        return None if text is None else json.loads(text)

    def published(self, seq: int) -> tuple[float, int, int] | None:
        """The message of `seq` as published (published_at, delivered, failed), as the store
        has it; None while it is not."""
        text = self._client.hget(self._outcomes, seq)
        if text is None:
            return None
        published_at, delivered, failed, _ = json.loads(text)
        return published_at, delivered, failed

    def say(self, event: dict[str, Any]) -> None:
        """Tell every replica listening (the owner: answers and publications)."""
        self._client.publish(self.channel, json.dumps(event, separators=(",", ":")))

    def listen(self, heard: Callable[[str], None], lost: Callable[[], None]) -> None:
        """Call `heard` with every event said (JSON text), for good; `lost` each time the
        subscription broke (events may have been missed), before subscribing again."""
        while True:
            try:
                events = self._listening.apply(self._next_events)
            except valkey.ValkeyError as exc:
                log.warning("lost the cluster's events channel: %s", exc)
                lost()
                gevent.sleep(0.5)
                continue
            for event in events:
                heard(event)

    def _next_events(self) -> list[str]:
        """On the listening thread: the events said within a second (subscribing first)."""
        try:
            if self._pubsub is None:
                self._pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self.channel)
            events = []
            message = self._pubsub.get_message(timeout=1.0)
            while message is not None:
                if message["type"] == "message":
                    events.append(message["data"])
                message = self._pubsub.get_message(timeout=0)
            return events
        except valkey.ValkeyError:
            if self._pubsub is not None:
                self._pubsub.close()
            self._pubsub = None
            raise

    def close(self) -> None:
        self._puts.stop()
        self._client.close()
        self._reader.close()
        self._listening.kill()
