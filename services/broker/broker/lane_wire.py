"""How the owner of the queue hands subscribers' lanes to other replicas and hears how their
deliveries went (GROKER_STORE=valkey): two kinds of Valkey streams.

- `{prefix}:lanes:<instance>`, one per replica process (its lease token names it): what
  the owner gives that replica to deliver. Each entry is a list of ops, in order: `open`
  a lane (an assignment id and the subscriber), `msg` (a message as published, with the
  assignments it goes to), `close` a lane. The owner deletes it when the replica is gone.
- `{prefix}:lane-outcomes`, one for the cluster: what the replicas report back, each op
  naming its assignment: `d` (a message delivered or not), `r` (the lane gave up on its
  subscriber: remove it), `x` (the lane was dropped, undelivered: move it).

Every entry names the owner it is for (its lease token), so that neither end acts on what
a previous owner sent or was sent. Nothing here needs to survive a crash: an owner that
dies leaves the messages unpublished in the store, and the next one delivers them again."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from broker.model import Message, Subscriber
from broker.storage.valkey_client import StreamReader, ValkeyTarget

SOCKET_TIMEOUT = 10.0
# Entries read at once.
READ_COUNT = 500
# A replica's work stream outlives its last write by this much (one whose replica was
# killed while no owner watched is not left behind for good).
WORK_TTL_MS = 600_000
# The outcomes stream is read as it is written: this many entries is far more than the
# owner can be behind by.
OUTCOMES_KEPT = 100_000

Op = list[Any]
Entry = tuple[str, str, list[Op]]  # stream id, owner token, ops


def _dump(ops: list[Op]) -> str:
    return json.dumps(ops, separators=(",", ":"))


def open_op(assignment: str, subscriber: Subscriber) -> Op:
    return ["open", assignment, asdict(subscriber)]


def subscriber_of(op: Op) -> Subscriber:
    return Subscriber(**op[2])


def message_op(message: Message, assignment: str) -> Op:
    """A published message, as what its deliveries need (its payload is made again from
    these, the same), for `assignment` (more are added to its list)."""
    return [
        "msg", message.seq, message.id, message.body_json, message.headers,
        message.attributes, message.accepted_at, message.published_at, [assignment],
    ]  # fmt: skip


def message_of(op: Op) -> tuple[Message, list[str]]:
    """The message of a `msg` op, its publication begun as the owner began it, and the
    assignments it goes to."""
    _, seq, id_, body_json, headers, attributes, accepted_at, published_at, assignments = op
    message = Message(
        id=id_, seq=seq, body_json=body_json, mode="async", headers=headers,
        attributes=attributes, accepted_at=accepted_at,
    )  # fmt: skip
    message.begin_publication(assignments, at=published_at)
    return message, assignments


class LaneWire:
    """Both ends' calls; the blocking reads through a StreamReader, as the inbox's."""

    def __init__(self, target: ValkeyTarget | str, prefix: str) -> None:
        if isinstance(target, str):
            target = ValkeyTarget(target)
        self._work = f"{{{prefix}}}:lanes:"
        self._outcomes = f"{{{prefix}}}:lane-outcomes"
        self._client = target.client(SOCKET_TIMEOUT, 2.0)
        self._reader = StreamReader(target, SOCKET_TIMEOUT + 5, READ_COUNT)

    def ship(self, instance: str, owner: str, ops: list[Op]) -> None:
        key = self._work + instance
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(key, {"o": owner, "w": _dump(ops)})
        pipe.pexpire(key, WORK_TTL_MS)
        pipe.execute()

    def work(self, instance: str, after: str, block_ms: int) -> list[Entry]:
        """What the owner gave this replica after `after`, waiting up to `block_ms`."""
        return self._read(self._work + instance, after, block_ms)

    def done_with(self, instance: str, upto: str) -> None:
        """Drop the entries before `upto` from this replica's work stream."""
        self._client.xtrim(self._work + instance, minid=upto)

    def forget(self, instance: str) -> None:
        """The replica is gone: its work stream too."""
        self._client.delete(self._work + instance)

    def report(self, owner: str, ops: list[Op]) -> None:
        self._client.xadd(
            self._outcomes,
            {"o": owner, "w": _dump(ops)},
            maxlen=OUTCOMES_KEPT,
            approximate=True,
        )

    def outcomes_head(self) -> str:
        """Where an owner starting now reads the outcomes from: what is there is older."""
        newest = self._client.xrevrange(self._outcomes, count=1)
        return str(newest[0][0]) if newest else "0-0"

    def outcomes(self, after: str, block_ms: int) -> list[Entry]:
        return self._read(self._outcomes, after, block_ms)

    def _read(self, key: str, after: str, block_ms: int) -> list[Entry]:
        return [
            (entry_id, fields["o"], json.loads(fields["w"]))
            for entry_id, fields in self._reader.read(key, after, block_ms)
        ]

    def close(self) -> None:
        self._client.close()
        self._reader.close()
