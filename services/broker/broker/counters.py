"""Running totals the broker reports at /stats."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    accepted: int = 0
    published: int = 0
    delivered: int = 0
    failed: int = 0
    removed: int = 0
    unsubscribed: int = 0
    rejected_full: int = 0
    notifications_sent: int = 0
    notifications_failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
