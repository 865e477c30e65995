"""What the load generator sent and what came back, with end-to-end latencies."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PublishStats:
    sent: int = 0
    accepted: int = 0
    confirmed_sync: int = 0
    confirmed_async: int = 0
    sync_timeouts: int = 0
    rejected: int = 0
    errors: int = 0
    unknown_notifications: int = 0
    # id -> (mode, time sent) for messages accepted and not yet confirmed
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    accepted_ids: deque[str] = field(default_factory=lambda: deque(maxlen=100_000))
    max_sync_wait: float = 0.0  # the longest a sync publish was held, answered or not

    def accepted_message(self, message_id: str, mode: str, sent_at: float) -> None:
        self.accepted += 1
        self.accepted_ids.append(message_id)
        self.pending[message_id] = (mode, sent_at)

    def confirm(self, message_id: str) -> bool:
        """The message was published; False if it was not pending (unknown or repeated)."""
        entry = self.pending.pop(message_id, None)
        if entry is None:
            return False
        mode, sent_at = entry
        if mode == "sync":
            self.confirmed_sync += 1
        else:
            self.confirmed_async += 1
        self.latencies.append(time.time() - sent_at)
        return True

    def as_dict(self, with_ids: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "sent": self.sent,
            "accepted": self.accepted,
            "confirmed": self.confirmed_sync + self.confirmed_async,
            "confirmed_sync": self.confirmed_sync,
            "confirmed_async": self.confirmed_async,
            "pending": len(self.pending),
            "sync_timeouts": self.sync_timeouts,
            "rejected": self.rejected,
            "errors": self.errors,
            "unknown_notifications": self.unknown_notifications,
            "max_sync_wait_s": round(self.max_sync_wait, 3),
            "latency_ms": self._percentiles(),
        }
        if with_ids:
            answer["pending_ids"] = list(self.pending)
            answer["accepted_ids"] = list(self.accepted_ids)
        return answer

    def _percentiles(self) -> dict[str, float] | None:
        if len(self.latencies) < 2:
            return None
        cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
        return {f"p{p}": round(cuts[p - 1] * 1000, 1) for p in (50, 90, 99)}
