"""Prometheus metrics for every service, with prometheus-client.

Counts the services keep anyway (accepted, delivered, received, ...) are read when
/metrics is scraped, so the hot paths pay nothing for them; only latencies are observed
as they happen, into histograms. Each app has its own registry (tests build many apps)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Latencies from a millisecond (a delivery on the same host) to a minute (a sync timeout).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ReadAtScrape(Collector):
    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        yield from self._read()


def _family(kind, name: str, documentation: str, values, label: str):
    family = kind(name, documentation, labels=[label] if label else None)
    for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
        family.add_metric([key] if label else [], value)
    return family


def counter(name: str, documentation: str, values: dict[str, float] | float, label: str = ""):
    """A counter family: one value, or one per value of `label`. `name` without _total."""
    return _family(CounterMetricFamily, name, documentation, values, label)


def gauge(name: str, documentation: str, values: dict[str, float] | float, label: str = ""):
    return _family(GaugeMetricFamily, name, documentation, values, label)


def metrics_blueprint(registry: CollectorRegistry) -> Blueprint:
    metrics = Blueprint("metrics", __name__)

    @metrics.get("/metrics")
    def scrape():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    return metrics
