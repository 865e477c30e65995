"""The Valkey backend (GROKER_STORE=valkey): the queue and the subscriptions in Valkey
(Redis-compatible), behind a `QueueIndex` that serves the reads, like SqliteStore.

Every key is under one hash tag, `{prefix}` (GROKER_VALKEY_PREFIX, "groker" by default),
so a Valkey cluster keeps them in one slot and one script may touch them all:

    {groker}:messages       hash   seq -> the message as accepted (JSON: id, body, headers,
                                   mode, callback, accepted_at, key, fingerprint, and for
                                   a published CloudEvent its attributes); written
                                   once, so a publication never writes the body again
    {groker}:outcomes       hash   seq -> [published_at, delivered, failed, notified] (JSON),
                                   for published messages only
    {groker}:queued         zset   seqs not yet published, scored by seq
    {groker}:published      zset   seqs published, scored by published_at (for pruning)
    {groker}:last_seq       string the highest seq ever stored: seq never repeats, even once
                                   every message is pruned
    {groker}:subscriptions  hash   subscriber id -> {callback, created_at, secret, max_batch,
                                   max_wait_ms, format, cloudevents_mode} (JSON; rows
                                   written before a field existed get its default)
    {groker}:owner          string who may write: the fencing token (see WRITE)

Writes go through `group_commit.GroupCommit` (one writer, since the client blocks: inline
where gevent patched the sockets, a thread of its own otherwise, see blocking.py):
each batch is ONE call of the WRITE script, which applies it whole; Valkey runs with
`appendonly yes` and `appendfsync always`, so its answer means fsynced. Fencing: a store
given an `owner_token` writes only while `{groker}:owner` holds that token; otherwise the
script changes nothing and the batch fails with StoreError (a broker that lost ownership
to another one can no longer write).

A write that fails for any other reason (Valkey gone, a timeout, too few replicas) may have
been applied all the same: the index no longer says what Valkey holds, and a message
written but forgotten here would be delivered after later ones once read back. So the
store stops writing (`sound` False, every later write refused) and its replica starts over
from Valkey (replica.py), where a publisher's retry with its Idempotency-Key finds the
message if it was written.

Replicated Valkey (GROKER_VALKEY_SENTINELS, GROKER_VALKEY_WAIT_REPLICAS=N): each batch is
then answered only once WAITAOF says it is in the append-only file of the primary and of N
replicas, so a failover to one of them keeps every write a publisher was told about."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from valkey.exceptions import ResponseError

from broker.errors import StoreError
from broker.model import Message, Subscriber
from broker.storage.group_commit import GroupCommit
from broker.storage.index import QueueIndex, ServedFromIndex
from broker.storage.valkey_client import ValkeyTarget, release

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


KEYS = (
    "owner", "last_seq", "messages", "outcomes", "queued", "published", "subscriptions", "inbox",
)  # fmt: skip
# A write: an opcode and its arguments, as WRITE reads them from ARGV.
Op = tuple[str | int | float, ...]
# Refused writes come back as this error, turned into StoreError.
FENCED = "FENCED"
# A Valkey that stops answering fails the write (503) rather than holding publishers.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 2.0
# How long a write waits for its replicas (WAITAOF), within SOCKET_TIMEOUT.
WAIT_REPLICAS_MS = 5000
# Rows read per HMGET at start, so that a long queue is not one huge reply.
LOAD_CHUNK = 1000

# KEYS as above; ARGV[1] the owner token ('' = no check), then the operations:
#   A seq row                    append: the row, queued, last_seq
#   P seq published_at outcome   published: out of the queue, kept for GET
#   N seq outcome                notified (the outcome again, notified set)
#   X cutoff keep                prune: published, older than cutoff or beyond the newest
#                                `keep`, never the newest one
#   S id subscription            save a subscription
#   D id                         delete one
#   I entry answer_key answer ms take an entry out of the cluster's inbox (inbox.py),
#                                leaving its answer for `ms`
# Scripts are not rolled back on error: the owner check comes before any write, and the
# operations themselves cannot fail on keys of the right types.
WRITE = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED another broker owns the queue')
end
local last, last_arg = tonumber(redis.call('GET', KEYS[2]) or '0'), nil
local i = 2
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'A' then
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[i + 2])
    redis.call('ZADD', KEYS[5], ARGV[i + 1], ARGV[i + 1])
    if tonumber(ARGV[i + 1]) > last then
      -- kept as the argument's text: Lua would print a large number as a float
      last, last_arg = tonumber(ARGV[i + 1]), ARGV[i + 1]
    end
    i = i + 3
  elseif op == 'P' then
    if redis.call('HEXISTS', KEYS[3], ARGV[i + 1]) == 1 then
      redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 3])
      redis.call('ZREM', KEYS[5], ARGV[i + 1])
      redis.call('ZADD', KEYS[6], ARGV[i + 2], ARGV[i + 1])
    end
    i = i + 4
  elseif op == 'N' then
    if redis.call('HEXISTS', KEYS[4], ARGV[i + 1]) == 1 then
      redis.call('HSET', KEYS[4], ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 3
  elseif op == 'X' then
    local n = redis.call('ZCARD', KEYS[6])
    local old = redis.call('ZCOUNT', KEYS[6], '-inf', '(' .. ARGV[i + 1])
    local doomed = math.min(math.max(n - tonumber(ARGV[i + 2]), old), n - 1)
    while doomed > 0 do
      local seqs = redis.call('ZRANGE', KEYS[6], 0, math.min(doomed, 1000) - 1)
      redis.call('HDEL', KEYS[3], unpack(seqs))
      redis.call('HDEL', KEYS[4], unpack(seqs))
      redis.call('ZREM', KEYS[6], unpack(seqs))
      doomed = doomed - #seqs
    end
    i = i + 3
  elseif op == 'S' then
    redis.call('HSET', KEYS[7], ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'D' then
    redis.call('HDEL', KEYS[7], ARGV[i + 1])
    i = i + 2
  elseif op == 'I' then
    redis.call('XDEL', KEYS[8], ARGV[i + 1])
    redis.call('SET', ARGV[i + 2], ARGV[i + 3], 'PX', ARGV[i + 4])
    i = i + 5
  else
    return redis.error_reply('unknown operation ' .. op)
  end
end
if last_arg then
  redis.call('SET', KEYS[2], last_arg)
end
return 0
"""


class ValkeyStore(ServedFromIndex):
    """Every change is written to Valkey (group commit, one writer thread, one script per
    batch); the queue and the recent messages are also kept in a `QueueIndex`, loaded from
    Valkey at start."""

    def __init__(
        self,
        target: ValkeyTarget | str,
        prefix: str = "groker",
        retention_count: int = 10_000,
        retention_seconds: float = 3600,
        owner_token: str | None = None,
        observe_write: Callable[[float], None] | None = None,
        wait_replicas: int = 0,
        wait_ms: int = WAIT_REPLICAS_MS,
    ) -> None:
        if isinstance(target, str):
            target = ValkeyTarget(target)
        self._index = QueueIndex(retention_count, retention_seconds)
        self._retention_count = retention_count
        self._retention_seconds = retention_seconds
        self._owner_token = owner_token or ""
        self._wait_replicas = wait_replicas
        self._wait_ms = wait_ms
        self._failure: str | None = None  # why the store stopped writing
        self._keys = [f"{{{prefix}}}:{name}" for name in KEYS]
        self._key = dict(zip(KEYS, self._keys, strict=True))
        # Created here but connects lazily: every connection is made and used by the writer
        # (blocking.py; with gevent's patched sockets, a socket belongs to its thread).
        self._client = target.client(SOCKET_TIMEOUT, CONNECT_TIMEOUT)
        self._write = self._client.register_script(WRITE)
        self._subscriptions: list[Subscriber] = []
        self._writer: GroupCommit[Op] = GroupCommit(
            self._commit, self._index, observe_write, sockets_only=True
        )
        try:
            self._load()
        except Exception as exc:
            self._writer.close(release=lambda: release(self._client))
            raise StoreError(f"cannot load from Valkey at {target}: {exc}") from exc

    @classmethod
    def from_settings(
        cls,
        settings: BrokerSettings,
        observe_write: Callable[[float], None] | None = None,
        owner_token: str | None = None,
    ) -> ValkeyStore:
        return cls(
            ValkeyTarget.from_settings(settings),
            settings.valkey_prefix,
            settings.retention_count,
            settings.retention_seconds,
            owner_token=owner_token,
            observe_write=observe_write,
            wait_replicas=settings.valkey_wait_replicas,
        )

    @property
    def sound(self) -> bool:  # type: ignore[override]
        return self._failure is None

    @property
    def batches(self) -> int:
        """Writes so far (the tests count them)."""
        return self._writer.batches

    # --- the writer thread -------------------------------------------------------------
    def _commit(self, ops: list[Op]) -> None:
        if self._failure is not None:
            raise StoreError(f"not writing since a write failed ({self._failure}): starting over")
        args: list[str | int | float] = [self._owner_token]
        for op in ops:
            args.extend(op)
        try:
            self._write(keys=self._keys, args=args)
            if self._wait_replicas:
                _, replicas = self._client.execute_command(
                    "WAITAOF", 1, self._wait_replicas, self._wait_ms
                )
                if replicas < self._wait_replicas:
                    raise StoreError(
                        f"written, but in the append-only file of {replicas} replicas, not"
                        f" {self._wait_replicas}, after {self._wait_ms} ms"
                    )
        except Exception as exc:
            if isinstance(exc, ResponseError) and str(exc).startswith(FENCED):
                exc = StoreError("fenced: another broker owns the queue")
            self._failure = str(exc)
            raise exc

    def _read(self) -> tuple[list[Message], list[Message], int, list[Subscriber]]:
        """What a restart needs, read on the writer thread: the queued messages, the newest
        `retention_count` published ones, last_seq, the subscriptions."""
        key = self._key
        newest = self._retention_count
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrange(key["queued"], 0, -1)
            if newest:
                pipe.zrange(key["published"], -newest, -1)
            else:  # none (zrange(-0, -1) would be every one)
                pipe.zrange(key["published"], 1, 0)
            pipe.get(key["last_seq"])
            pipe.hgetall(key["subscriptions"])
            queued_seqs, published_seqs, last, subscriptions = pipe.execute()
        queued = [int(seq) for seq in queued_seqs]
        published = [int(seq) for seq in published_seqs]
        rows = self._rows(key["messages"], queued + published)
        queued_rows, published_rows = rows[: len(queued)], rows[len(queued) :]
        outcomes = self._rows(key["outcomes"], published)
        waiting = [_message(seq, row) for seq, row in zip(queued, queued_rows, strict=True) if row]
        recent = [
            _message(seq, row, outcome)
            for seq, row, outcome in zip(published, published_rows, outcomes, strict=True)
            if row and outcome
        ]
        subscribers = [
            Subscriber(id=sid, **json.loads(fields)) for sid, fields in subscriptions.items()
        ]
        return waiting, recent, int(last or 0), subscribers

    def _rows(self, hash_key: str, seqs: list[int]) -> list[str | None]:
        rows: list[str | None] = []
        for start in range(0, len(seqs), LOAD_CHUNK):
            rows.extend(self._client.hmget(hash_key, seqs[start : start + LOAD_CHUNK]))
        return rows

    # --- recovery --------------------------------------------------------------------------
    def _load(self) -> None:
        queued, published, last, self._subscriptions = self._writer.run(self._read)
        for message in queued:
            self._index.append(message)
        for message in published:
            self._index.remember_published(message)
        self._index.carry_on_from(last)
        self._index.recovered(len(self._subscriptions))

    # --- the Store interface (the reads: ServedFromIndex) ---------------------------------
    def append(self, message: Message) -> None:
        self.append_all([message])

    def append_all(self, messages: list[Message]) -> None:
        # As in SqliteStore: queued at once (seq order is queue order), handed out only once
        # written, taken out again if the write fails; all in one script call.
        for message in messages:
            self._index.append(message, committed=False)
            op = ("A", message.seq, _row(message))
            self._writer.submit(op, wait=message is messages[-1], appended=message)

    def mark_published(self, message: Message) -> None:
        self._index.mark_published(message)
        published_at = message.published_at or time.time()
        self._writer.submit(("P", message.seq, published_at, _outcome(message)), wait=False)

    def mark_notified(self, message: Message) -> None:
        message.notified = True
        self._writer.submit(("N", message.seq, _outcome(message)), wait=False)

    def prune(self) -> int:
        pruned = self._index.prune()
        cutoff = time.time() - self._retention_seconds
        self._writer.submit(("X", cutoff, self._retention_count), wait=False)
        return pruned

    def save_subscription(self, subscriber: Subscriber) -> None:
        fields = {
            "callback": subscriber.callback,
            "created_at": subscriber.created_at,
            "secret": subscriber.secret,
            "max_batch": subscriber.max_batch,
            "max_wait_ms": subscriber.max_wait_ms,
            "format": subscriber.format,
            "cloudevents_mode": subscriber.cloudevents_mode,
        }
        self._writer.submit(("S", subscriber.id, json.dumps(fields)), wait=True)

    def consume_inbox(self, consumed: list[tuple[str, str, str, int]]) -> None:
        """Take entries out of the cluster's inbox, each (entry id, answer key, answer, ms)
        leaving its answer; returns once written (fenced like every write)."""
        for entry in consumed:
            self._writer.submit(("I", *entry), wait=entry is consumed[-1])

    def delete_subscription(self, subscriber_id: str) -> None:
        self._writer.submit(("D", subscriber_id), wait=False)

    def subscriptions(self) -> list[Subscriber]:
        return list(self._subscriptions)

    def close(self) -> None:
        """Write what is pending (finishing a batch under way first), then disconnect."""
        self._writer.close(release=lambda: release(self._client))


def _row(message: Message) -> str:
    return json.dumps(
        {
            "id": message.id,
            "body": message.body_json,
            "headers": message.headers,
            "mode": message.mode,
            "callback": message.callback,
            "accepted_at": message.accepted_at,
            "key": message.key,
            "fingerprint": message.fingerprint,
            "attributes": message.attributes,
        },
        separators=(",", ":"),
    )


def _outcome(message: Message) -> str:
    # No callback means nothing to notify: recorded as notified.
    notified = message.notified or not message.callback
    return json.dumps([message.published_at, message.delivered, message.failed, notified])


def _message(seq: int, row: str, outcome: str | None = None) -> Message:
    fields: dict[str, Any] = json.loads(row)
    message = Message(
        id=fields["id"],
        seq=seq,
        body_json=fields["body"],
        mode=fields["mode"],
        headers=fields["headers"] or None,
        callback=fields["callback"],
        accepted_at=fields["accepted_at"],
        key=fields["key"],
        fingerprint=fields["fingerprint"],
        # Rows written before CloudEvents were published have none.
        attributes=fields.get("attributes"),
    )
    if outcome is not None:
        message.published_at, message.delivered, message.failed, message.notified = json.loads(
            outcome
        )
        message.status = "published"
    return message
