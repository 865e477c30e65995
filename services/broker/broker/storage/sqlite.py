"""The durable backend (the default): SQLite in WAL mode, behind a `QueueIndex` that
serves the reads.

Writes go through `group_commit.GroupCommit`: one writer thread (sqlite3 blocks), batches
that share one transaction and one fsync. A publish is answered only after the batch
holding its message has committed."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.model import Message, Subscriber
from broker.storage.group_commit import GroupCommit
from broker.storage.index import QueueIndex, ServedFromIndex

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    headers TEXT NOT NULL,
    mode TEXT NOT NULL,
    callback TEXT,
    accepted_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    published_at REAL,
    delivered INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    notified INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    fingerprint TEXT,
    attributes TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_status ON messages (status, seq);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    callback TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    secret TEXT NOT NULL,
    max_batch INTEGER NOT NULL DEFAULT 1,
    max_wait_ms INTEGER NOT NULL DEFAULT 0,
    format TEXT NOT NULL DEFAULT 'groker',
    cloudevents_mode TEXT NOT NULL DEFAULT 'binary'
);
"""

# Files written before these columns existed get them at open: table -> column -> type.
ADDED_COLUMNS = {
    "messages": {"idempotency_key": "TEXT", "fingerprint": "TEXT", "attributes": "TEXT"},
    "subscriptions": {
        "max_batch": "INTEGER NOT NULL DEFAULT 1",
        "max_wait_ms": "INTEGER NOT NULL DEFAULT 0",
        "format": "TEXT NOT NULL DEFAULT 'groker'",
        "cloudevents_mode": "TEXT NOT NULL DEFAULT 'binary'",
    },
}
INSERT_MESSAGE = (
    "INSERT INTO messages"
    " (seq, id, body, headers, mode, callback, accepted_at, idempotency_key, fingerprint,"
    " attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
MARK_PUBLISHED = (
    "UPDATE messages SET status = 'published', published_at = ?, delivered = ?, failed = ?,"
    " notified = ? WHERE seq = ?"
)
MARK_NOTIFIED = "UPDATE messages SET notified = 1 WHERE seq = ?"
SUBSCRIPTION_COLUMNS = (
    "id, callback, created_at, secret, max_batch, max_wait_ms, format, cloudevents_mode"
)
INSERT_SUBSCRIPTION = (
    f"INSERT OR REPLACE INTO subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
DELETE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE id = ?"
# Never prunes the newest row, so that seq carries on from it after a restart.
PRUNE = (
    "DELETE FROM messages WHERE status = 'published' AND seq < (SELECT MAX(seq) FROM messages)"
    " AND (published_at < ? OR seq <= (SELECT MAX(seq) FROM messages) - ?)"
)
# One write: a statement and its parameters (a batch runs them in one transaction).
Statement = tuple[str, tuple[Any, ...]]
COLUMNS = (
    "seq, id, body, headers, mode, callback, accepted_at, status, published_at,"
    " delivered, failed, notified, idempotency_key, fingerprint, attributes"
)


class SqliteStore(ServedFromIndex):
    """Every change is written to SQLite (group commit, one writer thread); the queue and
    the recent messages are also kept in a `QueueIndex`, loaded from the file at start."""

    def __init__(
        self,
        path: str,
        retention_count: int = 10_000,
        retention_seconds: float = 3600,
        synchronous: str = "FULL",
        observe_write: Callable[[float], None] | None = None,
    ) -> None:
        self._index = QueueIndex(retention_count, retention_seconds)
        self._retention_count = retention_count
        self._retention_seconds = retention_seconds
        self._path = path
        self._synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._subscriptions: list[Subscriber] = []
        self._writer: GroupCommit[Statement] = GroupCommit(self._commit, self._index, observe_write)
        self._writer.run(self._open)
        self._load()

    @property
    def batches(self) -> int:
        """Commits so far (the tests count them)."""
        return self._writer.batches

    @classmethod
    def from_settings(
        cls,
        settings: BrokerSettings,
        observe_write: Callable[[float], None] | None = None,
        owner_token: str | None = None,
    ) -> SqliteStore:
        # One broker process owns a SQLite file: there is no other writer to fence off.
        del owner_token
        return cls(
            settings.db_path,
            settings.retention_count,
            settings.retention_seconds,
            synchronous=settings.sqlite_synchronous,
            observe_write=observe_write,
        )

    # --- the writer thread -------------------------------------------------------------
    def _open(self) -> None:
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in present:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._conn = conn

    def _commit(self, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        assert self._conn is not None
        self._conn.execute("BEGIN")
        try:
            for sql, group in groupby(ops, key=lambda op: op[0]):
                self._conn.executemany(sql, [params for _, params in group])
            self._conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back itself (a full disk does): keep the first error.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        return self._conn.execute(sql, params).fetchall()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _submit(
        self, sql: str, params: tuple[Any, ...], wait: bool, appended: Message | None = None
    ) -> None:
        self._writer.submit((sql, params), wait, appended)

    # --- recovery --------------------------------------------------------------------------
    def _load(self) -> None:
        rows = self._writer.run(
            self._query, f"SELECT {COLUMNS} FROM messages WHERE status = 'queued' ORDER BY seq"
        )
        for row in rows:
            self._index.append(_message(row))
        recent = self._writer.run(
            self._query,
            f"SELECT {COLUMNS} FROM messages WHERE status = 'published' ORDER BY seq DESC LIMIT ?",
            (self._retention_count,),
        )
        for row in reversed(recent):
            self._index.remember_published(_message(row))
        (last,) = self._writer.run(self._query, "SELECT COALESCE(MAX(seq), 0) FROM messages")
        self._index.carry_on_from(last[0])
        self._subscriptions = [
            Subscriber(
                cb,
                id=sid,
                created_at=at,
                secret=secret,
                max_batch=most,
                max_wait_ms=wait,
                format=kind,
                cloudevents_mode=mode,
            )
            for sid, cb, at, secret, most, wait, kind, mode in self._writer.run(
                self._query, f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
            )
        ]
        self._index.recovered(len(self._subscriptions))

    # --- the Store interface (the reads: ServedFromIndex) ---------------------------------
    def append(self, message: Message) -> None:
        self.append_all([message])

    def append_all(self, messages: list[Message]) -> None:
        # In the in-memory queue at once, so that seq order and queue order agree, but not
        # handed out before the rows are committed; the publisher hears back only then. A
        # failed write takes them out again: refused (503) means never published. Nothing
        # yields between the submits, so they are all in one commit: whole or not at all.
        for message in messages:
            self._index.append(message, committed=False)
            self._submit(
                INSERT_MESSAGE,
                (
                    message.seq,
                    message.id,
                    message.body_json,
                    json.dumps(message.headers or {}),
                    message.mode,
                    message.callback,
                    message.accepted_at,
                    message.key,
                    message.fingerprint,
                    # NULL for all but published CloudEvents.
                    None if message.attributes is None else json.dumps(message.attributes),
                ),
                wait=message is messages[-1],
                appended=message,
            )

    def mark_published(self, message: Message) -> None:
        self._index.mark_published(message)
        # No callback means nothing to notify: recorded as notified.
        notified = message.notified or not message.callback
        self._submit(
            MARK_PUBLISHED,
            (message.published_at, message.delivered, message.failed, notified, message.seq),
            wait=False,
        )

    def mark_notified(self, message: Message) -> None:
        message.notified = True
        self._submit(MARK_NOTIFIED, (message.seq,), wait=False)

    def prune(self) -> int:
        pruned = self._index.prune()
        cutoff = time.time() - self._retention_seconds
        self._submit(PRUNE, (cutoff, self._retention_count), wait=False)
        return pruned

    def save_subscription(self, subscriber: Subscriber) -> None:
        self._submit(
            INSERT_SUBSCRIPTION,
            (
                subscriber.id,
                subscriber.callback,
                subscriber.created_at,
                subscriber.secret,
                subscriber.max_batch,
                subscriber.max_wait_ms,
                subscriber.format,
                subscriber.cloudevents_mode,
            ),
            wait=True,
        )

    def delete_subscription(self, subscriber_id: str) -> None:
        self._submit(DELETE_SUBSCRIPTION, (subscriber_id,), wait=False)

    def subscriptions(self) -> list[Subscriber]:
        return list(self._subscriptions)

    def close(self) -> None:
        """Commit what is pending (finishing a batch under way first), then close."""
        self._writer.close(release=self._release)


def _message(row: tuple[Any, ...]) -> Message:
    seq, mid, body, headers, mode, callback, accepted_at, status, published_at, *rest = row
    delivered, failed, notified, key, fingerprint, attributes = rest
    return Message(
        id=mid,
        seq=seq,
        headers=json.loads(headers) or None,
        mode=mode,
        callback=callback,
        accepted_at=accepted_at,
        status=status,
        published_at=published_at,
        delivered=delivered,
        failed=failed,
        notified=bool(notified),
        body_json=body,
        key=key,
        fingerprint=fingerprint,
        attributes=None if attributes is None else json.loads(attributes),
    )
