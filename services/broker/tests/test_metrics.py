"""/metrics speaks Prometheus, with the broker's numbers in it, and they move."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from groker_common.testing import wait_until


def scrape(client) -> dict[str, float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(answer.data.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_follow_publishing_and_delivery(client, make_sink):
    before = scrape(client)
    for name in (
        "groker_queue_length",
        "groker_oldest_queued_age_seconds",
        "groker_subscribers",
        "groker_messages_accepted_total",
        "groker_deliveries_total{outcome=delivered}",
        "groker_subscribers_removed_total",
        "groker_notifications_total{outcome=failed}",
        "groker_publish_latency_seconds_count{mode=sync}",
        "groker_delivery_latency_seconds_count",
    ):
        assert name in before, name
    client.post("/messages", json={"body": "waits"})  # no subscriber yet: queued
    queued = scrape(client)
    assert queued["groker_queue_length"] == 1
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    client.post("/messages", json={"body": "now", "mode": "sync"})
    wait_until(lambda: scrape(client)["groker_messages_published_total"] == 2)
    after = scrape(client)
    assert after["groker_messages_accepted_total"] == 2
    assert after["groker_deliveries_total{outcome=delivered}"] == 2
    assert after["groker_subscribers"] == 1
    assert after["groker_queue_length"] == 0
    assert after["groker_publish_latency_seconds_count{mode=sync}"] == 1
    assert after["groker_publish_latency_seconds_count{mode=async}"] == 1
    assert after["groker_delivery_latency_seconds_count"] == 2


def test_the_durable_store_reports_its_write_latency(make_app, tmp_path):
    from .conftest import settings_for_tests

    app = make_app(settings_for_tests(store="sqlite", db_path=str(tmp_path / "m.db")))
    client = app.test_client()
    client.post("/messages", json={"body": 1})
    assert scrape(client)["groker_store_write_seconds_count"] >= 1
