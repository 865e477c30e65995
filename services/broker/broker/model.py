"""The broker's plain records: a message and its publication, a subscriber, the running
totals and the snapshot that /stats, /metrics and the dashboard all read.

Nothing here imports the rest of the broker, so every other module can import it."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from groker_common.signatures import new_secret

Mode = Literal["sync", "async"]
Status = Literal["queued", "published"]
# How a sync publisher's wait ended.
WaitResult = Literal["published", "timeout", "draining"]
# What a subscriber is sent: groker's own envelope, or CloudEvents (cloudevents.py), and
# then in which HTTP content mode (a batch is always structured events in an array).
Format = Literal["groker", "cloudevents"]
CloudEventsMode = Literal["binary", "structured"]


class JsonText(str):
    """A body already encoded by `encode_body` (the HTTP layer encodes it while it checks
    it), so that the publish route encodes each body once."""


def integral(value: Any) -> Any:
    """A whole number written with a fraction (7.0) as the integer it is: JSON has one
    number type, and JSON Schema's "integer" takes 7.0 too (but not "7", nor true)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def encode_body(body: Any) -> JsonText:
    """The body as compact JSON text. allow_nan=False: never emit NaN or Infinity, which
    strict JSON parsers refuse (raises ValueError)."""
    if isinstance(body, JsonText):
        return body
    return JsonText(json.dumps(body, separators=(",", ":"), allow_nan=False))


# One message of a publish request: its body (as encoded JSON text) and its headers.
Item = tuple[str, dict[str, str] | None]


def fingerprint(
    items: list[Item],
    mode: Mode,
    callback: str | None,
    batch: bool,
    attributes: list[dict[str, Any]] | None = None,
) -> str:
    """What an idempotency key is bound to: the whole request (one message, or a batch),
    hashed. Bodies are their encoded text, so the same values in the same order (whitespace
    aside) are the same. Published CloudEvents' attributes count too, each event's in turn
    (only when there are some, so that the fingerprints of other requests stay what they
    were; one event's is what it was before batches of events)."""
    digest = hashlib.sha256(json.dumps([batch, len(items), mode, callback]).encode())
    for event in attributes or ():
        digest.update(json.dumps(event, sort_keys=True).encode())
    for body_json, headers in items:
        digest.update(json.dumps(sorted((headers or {}).items())).encode())
        digest.update(b"\n")
        digest.update(body_json.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def attribute_headers(attributes: dict[str, Any] | None) -> dict[str, str]:
    """A published CloudEvent's attributes as the headers of groker's envelope, named and
    written as in the CloudEvents binary mode (`ce-type: com.example.order`, `ce-n: 5`)."""
    return {
        f"ce-{name}": value if isinstance(value, str) else json.dumps(value)
        for name, value in (attributes or {}).items()
    }


class Reply(Protocol):
    """How the publisher of a message hears that it was published: the two ways are
    `replies.SyncReply` (the HTTP request still waiting) and `replies.CallbackReply`."""

    def on_published(self, message: Message) -> None:
        """Called once, when every member of the message's delivery set is done."""


# Slots, the body kept only as its JSON text, no empty containers, and the payload dropped
# once published: a queued message costs well under a kilobyte beyond its body.
@dataclass(eq=False, slots=True)
class Message:
    """One accepted message: what was published, where it stands in the queue (`seq`),
    and, once its publication begins, which subscribers it goes to and how that went."""

    id: str
    seq: int
    # The body as JSON text, encoded once: it is what the store keeps, what counts
    # against the queue's byte bound, and what goes into every subscriber's payload.
    body_json: str
    mode: Mode
    headers: dict[str, str] | None = None
    callback: str | None = None
    # Published as a CloudEvent: its attributes (id, source, type, extensions...; all but
    # its data, which is the body), kept to deliver the same event (cloudevents.py).
    attributes: dict[str, Any] | None = None
    # With an idempotency key (scoped to the publisher's token), the fingerprint of the
    # request it was first sent with: the same key again is answered with this message.
    key: str | None = None
    fingerprint: str | None = None
    accepted_at: float = field(default_factory=time.time)
    status: Status = "queued"
    published_at: float | None = None
    delivered: int = 0
    failed: int = 0
    notified: bool = False
    # How the publisher hears of the outcome; not part of what a store keeps.
    reply: Reply | None = field(default=None, repr=False)
    _pending: set[str] | None = field(default=None, repr=False)
    _payload: bytes = field(default=b"", repr=False)
    # Other formats' encodings of this message (cloudevents.py), made on first use by a
    # lane that needs one and shared by all of them; dropped with the payload.
    _encodings: dict[str, bytes] | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """What this message keeps while queued, counted against the queue's byte bound:
        the body's JSON text, the headers, the callback and the idempotency record."""
        headers = sum(len(k) + len(v) for k, v in self.headers.items()) if self.headers else 0
        kept = len(self.callback or "") + len(self.key or "") + len(self.fingerprint or "")
        if self.attributes:
            kept += sum(len(k) + len(str(v)) for k, v in self.attributes.items())
        return len(self.body_json) + headers + kept

    def begin_publication(self, subscriber_ids: list[str], at: float | None = None) -> None:
        """Fix the delivery set, and encode the subscriber payload once for all of them
        (`at`: as the owner of the queue began it, on a replica that delivers for it)."""
        self.published_at = time.time() if at is None else at
        self._pending = set(subscriber_ids)
        envelope = json.dumps(
            {
                "id": self.id,
                "seq": self.seq,
                "headers": self.headers or attribute_headers(self.attributes),
                "published_at": self.published_at,
            },
            separators=(",", ":"),
        )
        # Splice the already-encoded body in rather than encoding it again.
        self._payload = f'{envelope[:-1]},"body":{self.body_json}}}'.encode()

    @property
    def payload(self) -> bytes:
        """What every subscriber is sent (empty before publication and once it is over)."""
        return self._payload

    def encoded(self, kind: str, encode: Callable[[Message], bytes]) -> bytes:
        """This message as `kind` (a format's name), encoded once for every lane."""
        if self._encodings is None:
            self._encodings = {}
        cached = self._encodings.get(kind)
        if cached is None:
            cached = self._encodings[kind] = encode(self)
        return cached

    def resolve(self, subscriber_id: str, delivered: bool) -> bool:
        """Record one subscriber's outcome; True when that was the last one outstanding.

        Idempotent per subscriber: a lane closing can race a lane finishing."""
        if self._pending is None or subscriber_id not in self._pending:
            return False
        self._pending.discard(subscriber_id)
        if delivered:
            self.delivered += 1
        else:
            self.failed += 1
        if self._pending:
            return False
        self.status = "published"
        # Every lane is done with them.
        self._pending, self._payload, self._encodings = None, b"", None
        return True


@dataclass(eq=False)
class Subscriber:
    """A webhook that receives every message published while it is subscribed."""

    callback: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: float = field(default_factory=time.time)
    # Signs every delivery to this subscriber; told to it only in the subscribe answer.
    secret: str = field(default_factory=new_secret, repr=False)
    # Batch delivery: up to max_batch waiting messages per POST (as a JSON array), waiting
    # up to max_wait_ms for more; 1 is one message per POST (a plain object).
    max_batch: int = 1
    max_wait_ms: int = 0
    # What each delivery is (see cloudevents.py for the CloudEvents format).
    format: Format = "groker"
    cloudevents_mode: CloudEventsMode = "binary"

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "callback": self.callback,
            "created_at": self.created_at,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_ms,
            "format": self.format,
            "cloudevents_mode": self.cloudevents_mode,
        }


@dataclass
class Counters:
    """Running totals since this broker process started."""

    accepted: int = 0
    published: int = 0
    delivered: int = 0
    failed: int = 0
    removed: int = 0
    unsubscribed: int = 0
    rejected_full: int = 0
    replayed: int = 0  # publishes answered with their idempotency key's first message
    notifications_sent: int = 0
    notifications_failed: int = 0


@dataclass(frozen=True)
class Stats:
    """The broker's figures at one moment: what /stats answers and /metrics exports."""

    queue_length: int
    unpublished: int
    unpublished_bytes: int
    oldest_queued_age: float
    last_seq: int
    subscribers: int
    lane_backlog: dict[str, int]
    store: str
    replica: str  # this process's host name (answers also say it: X-Groker-Replica)
    draining: bool
    counters: Counters

    def as_dict(self) -> dict[str, Any]:
        answer = asdict(self)
        counters = answer.pop("counters")
        return answer | counters
