"""What the load generator sent and what came back, with end-to-end latencies."""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from groker_common.metrics import LATENCY_BUCKETS, ReadAtScrape, counter, gauge


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
    bad_signatures: int = 0
    lost: int = 0  # messages never accepted: the retry budget ran out, or a 4xx refused them
    duplicates: int = 0  # messages the broker answered with more than one distinct id
    retries: int = 0  # attempts beyond each message's first
    replayed: int = 0  # answers the broker replayed for an Idempotency-Key it had seen
    # id -> (mode, time sent) for messages accepted and not yet confirmed
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    accepted_ids: deque[str] = field(default_factory=lambda: deque(maxlen=100_000))
    max_sync_wait: float = 0.0  # the longest a sync publish was held, answered or not
    # Notifications that came before we had read the broker's 202 for that id (a fast
    # publish can beat our own bookkeeping), or repeats after a broker restart.
    early: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.registry = CollectorRegistry()
        self.e2e_latency = Histogram(
            "groker_server_e2e_latency_seconds",
            "From sending a message to hearing it was published",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ReadAtScrape(self._metrics))

    def _metrics(self) -> Iterable[Metric]:
        yield counter("groker_server_sent", "Messages the load generator sent", self.sent)
        yield counter("groker_server_accepted", "Messages the broker accepted", self.accepted)
        yield counter(
            "groker_server_confirmed",
            "Messages confirmed published, by how",
            {"sync": self.confirmed_sync, "async": self.confirmed_async},
            "mode",
        )
        yield gauge("groker_server_pending", "Accepted, not yet confirmed", len(self.pending))
        yield counter(
            "groker_server_rejected",
            "Publish attempts refused for now (503 queue full or stopping, 429)",
            self.rejected,
        )
        yield counter(
            "groker_server_errors",
            "Publish attempts without an answer, or a wrong one",
            self.errors,
        )
        yield counter(
            "groker_server_bad_signatures",
            "Notifications refused for their signature",
            self.bad_signatures,
        )
        yield counter("groker_server_lost", "Messages never accepted, given up", self.lost)
        yield counter(
            "groker_server_duplicates",
            "Messages the broker answered with more than one id",
            self.duplicates,
        )
        yield counter("groker_server_retries", "Publish attempts beyond the first", self.retries)
        yield counter(
            "groker_server_replayed", "Answers replayed for a known Idempotency-Key", self.replayed
        )

    def accepted_message(self, message_id: str, mode: str, sent_at: float) -> None:
        self.accepted += 1
        self.accepted_ids.append(message_id)
        self.pending[message_id] = (mode, sent_at)
        confirmed_at = self.early.pop(message_id, None)
        if confirmed_at is not None:
            self.confirm(message_id, confirmed_at)

    def confirm(self, message_id: str, at: float | None = None) -> bool:
        """The message was published; False if it was not pending (not yet known to be
        accepted, or a repeat)."""
        entry = self.pending.pop(message_id, None)
        if entry is None:
            self.early[message_id] = at or time.time()
            while len(self.early) > 10_000:
                self.early.popitem(last=False)
            return False
        mode, sent_at = entry
        if mode == "sync":
            self.confirmed_sync += 1
        else:
            self.confirmed_async += 1
        latency = (at or time.time()) - sent_at
        self.latencies.append(latency)
        self.e2e_latency.observe(latency)
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
            "bad_signatures": self.bad_signatures,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "retries": self.retries,
            "replayed": self.replayed,
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
