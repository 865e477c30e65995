"""The broker's Prometheus metrics (served at /metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import Metric

from broker.model import Stats
from groker_common.metrics import LATENCY_BUCKETS, ReadAtScrape, counter, gauge


class BrokerMetrics:
    """The latency histograms, observed as things happen, and the figures of one `Stats`
    snapshot, read at each scrape (the same snapshot /stats answers with)."""

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

    def watch(self, read_stats: Callable[[], Stats]) -> None:
        self.registry.register(ReadAtScrape(lambda: _export(read_stats())))


def _export(stats: Stats) -> Iterable[Metric]:
    c = stats.counters
    yield gauge(
        "groker_queue_length", "Messages waiting for publication to begin", stats.queue_length
    )
    yield gauge("groker_unpublished_messages", "Accepted and not yet published", stats.unpublished)
    yield gauge(
        "groker_oldest_queued_age_seconds",
        "Age of the oldest message in the queue",
        stats.oldest_queued_age,
    )
    yield gauge("groker_subscribers", "Current subscribers", stats.subscribers)
    yield gauge(
        "groker_lane_backlog",
        "Messages waiting in one subscriber's lane",
        stats.lane_backlog,
        "subscriber",
    )
    yield counter("groker_messages_accepted", "Messages accepted", c.accepted)
    yield counter("groker_messages_published", "Messages published", c.published)
    yield counter(
        "groker_publishes_replayed",
        "Publishes answered with the message their Idempotency-Key already had",
        c.replayed,
    )
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
