"""The broker's Prometheus metrics (served at /metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from groker_common.metrics import LATENCY_BUCKETS, ReadAtScrape, counter, gauge

if TYPE_CHECKING:
    from broker.core import Broker


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        publish = Histogram(
            "groker_publish_latency_seconds",
            "From accepted to published (every subscriber in its delivery set done)",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency = {mode: publish.labels(mode) for mode in ("sync", "async")}
        self.delivery_latency = Histogram(
            "groker_delivery_latency_seconds",
            "One delivery to one subscriber, attempts included",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_write = Histogram(
            "groker_store_write_seconds",
            "One group commit to the durable store",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, broker: Broker) -> None:
        self.registry.register(ReadAtScrape(lambda: _read(broker)))


def _read(broker: Broker) -> Iterable[Metric]:
    c, store = broker.counters, broker.store
    oldest = store.oldest_queued_at()
    lanes = broker.registry.lanes()
    yield gauge("groker_queue_length", "Messages waiting for publication to begin", store.queued())
    yield gauge(
        "groker_unpublished_messages", "Accepted and not yet published", store.unpublished()
    )
    yield gauge(
        "groker_oldest_queued_age_seconds",
        "Age of the oldest message in the queue",
        time.time() - oldest if oldest else 0.0,
    )
    yield gauge("groker_subscribers", "Current subscribers", len(lanes))
    yield gauge(
        "groker_lane_backlog",
        "Messages waiting in one subscriber's lane",
        {lane.subscriber.id: lane.backlog for lane in lanes},
        "subscriber",
    )
    yield counter("groker_messages_accepted", "Messages accepted", c.accepted)
    yield counter("groker_messages_published", "Messages published", c.published)
    yield counter(
        "groker_publishes_rejected",
        "Publishes refused because the queue was full",
        c.rejected_full,
    )
    yield counter(
        "groker_deliveries",
        "Deliveries by outcome",
        {"delivered": c.delivered, "failed": c.failed},
        "outcome",
    )
    yield counter("groker_subscribers_removed", "Subscribers removed as unreachable", c.removed)
    yield counter(
        "groker_notifications",
        "Publisher notifications by outcome",
        {"sent": c.notifications_sent, "failed": c.notifications_failed},
        "outcome",
    )
