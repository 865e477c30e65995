"""A message and its publication: who it goes to and what became of it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from broker.senders import Sender

Mode = Literal["sync", "async"]


def encode_body(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


# Slots, the body kept only as its JSON text, no empty containers, and the payload dropped
# once published: a queued message costs well under a kilobyte beyond its body.
@dataclass(eq=False, slots=True)
class Message:
    id: str
    seq: int
    # The body as JSON text, encoded once: it is what the store keeps, what counts
    # against the queue's byte bound, and what goes into every subscriber's payload.
    body_json: str
    mode: Mode
    headers: dict[str, str] | None = None
    callback: str | None = None
    accepted_at: float = field(default_factory=time.time)
    status: Literal["queued", "published"] = "queued"
    published_at: float | None = None
    delivered: int = 0
    failed: int = 0
    notified: bool = False
    # How the publisher hears of the outcome; not part of what a store keeps.
    sender: Sender | None = field(default=None, repr=False)
    _pending: set[str] | None = field(default=None, repr=False)
    _payload: bytes = field(default=b"", repr=False)

    @property
    def size(self) -> int:
        return len(self.body_json)

    def begin_publication(self, subscriber_ids: list[str]) -> bytes:
        """Fix the delivery set, and encode the subscriber payload once for all of them."""
        self.published_at = time.time()
        self._pending = set(subscriber_ids)
        envelope = json.dumps(
            {
                "id": self.id,
                "seq": self.seq,
                "headers": self.headers or {},
                "published_at": self.published_at,
            },
            separators=(",", ":"),
        )
        # Splice the already-encoded body in rather than encoding it again.
        self._payload = f'{envelope[:-1]},"body":{self.body_json}}}'.encode()
        return self._payload

    @property
    def payload(self) -> bytes:
        return self._payload

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
        self._pending, self._payload = None, b""  # every lane is done with them
        return True

    def outcome(self) -> dict[str, Any]:
        """What the publisher is told, by HTTP answer, callback or GET /messages/<id>."""
        answer: dict[str, Any] = {"id": self.id, "seq": self.seq, "status": self.status}
        if self.status == "published":
            answer |= {
                "delivered": self.delivered,
                "failed": self.failed,
                "published_at": self.published_at,
            }
        return answer
