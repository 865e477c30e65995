"""What this subscriber has received: each delivery taken through the shared
WebhookReceiver (challenge, signature, envelope or CloudEvents, repeats dropped), printed
once, the recent ones kept for GET /messages, and counted for /metrics."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from groker_common.metrics import ReadAtScrape, counter
from groker_common.webhooks import Answer, SecretHolder, WebhookReceiver

log = logging.getLogger(__name__)


def printed(message: dict[str, Any]) -> str:
    """One received message as this subscriber prints it: `seq=12 {"n": 12}`, and for a
    CloudEvent what tells it apart: `seq=12 id=... type=... source=... {"n": 12}`."""
    event = message.get("cloudevent")
    said = "" if event is None else "".join(f" {k}={event[k]}" for k in ("id", "type", "source"))
    return f"seq={message['seq']}{said} {json.dumps(message['body'])}"


class Inbox:
    def __init__(
        self,
        keep_recent: int,
        secrets: SecretHolder | None,
        before_taking: Callable[[dict[str, Any]], Answer | None] | None = None,
        out: TextIO | None = None,
    ) -> None:
        """`secrets` None: take deliveries without checking their signature."""
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep_recent)
        self._out = out
        self.webhooks = WebhookReceiver(
            secrets,
            self._keep,
            self._refused,
            before_taking=before_taking,
            recent_ids=keep_recent,
            signature_error="bad signature",  # the word every groker service uses
        )
        self.registry = CollectorRegistry()
        self.registry.register(ReadAtScrape(self._metrics))

    def _metrics(self) -> Iterable[Metric]:
        webhooks = self.webhooks
        yield counter("groker_client_received", "Messages received", webhooks.received)
        yield counter(
            "groker_client_duplicates_dropped", "Repeated deliveries dropped", webhooks.duplicates
        )
        yield counter(
            "groker_client_bad_signatures",
            "Deliveries refused for their signature",
            webhooks.bad_signatures,
        )

    def _keep(self, message: dict[str, Any]) -> None:
        self._recent.append({**message, "received_at": time.time()})
        print(printed(message), file=self._out or sys.stdout, flush=True)

    def _refused(self, reason: str) -> None:
        log.warning("refused a delivery with a missing, wrong or stale signature: %s", reason)

    def recent(self) -> list[dict[str, Any]]:
        return list(self._recent)
