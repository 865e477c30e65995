"""What this subscriber has received: printed once each, recent ones kept, repeats dropped."""

from __future__ import annotations

import json
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from groker_common.metrics import ReadAtScrape, counter


class Inbox:
    def __init__(self, keep_recent: int, out: TextIO | None = None) -> None:
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keep = keep_recent
        self._out = out
        self.received = 0
        self.duplicates = 0
        self.bad_signatures = 0
        self.registry = CollectorRegistry()
        self.registry.register(ReadAtScrape(self._metrics))

    def _metrics(self) -> Iterable[Metric]:
        yield counter("groker_client_received", "Messages received", self.received)
        yield counter(
            "groker_client_duplicates_dropped", "Repeated deliveries dropped", self.duplicates
        )
        yield counter(
            "groker_client_bad_signatures",
            "Deliveries refused for their signature",
            self.bad_signatures,
        )

    def add(self, message: dict[str, Any]) -> bool:
        """Take a delivery; False if this id was already received (a redelivery)."""
        if message["id"] in self._recent:
            self.duplicates += 1
            return False
        self.received += 1
        self._recent[message["id"]] = {**message, "received_at": time.time()}
        while len(self._recent) > self._keep:
            self._recent.popitem(last=False)
        line = f"seq={message['seq']} {json.dumps(message['body'])}"
        print(line, file=self._out or sys.stdout, flush=True)
        return True

    def recent(self) -> list[dict[str, Any]]:
        return list(self._recent.values())
