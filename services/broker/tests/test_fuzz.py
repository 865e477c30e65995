"""schemathesis against a live broker (gunicorn + gevent, as deployed): every operation of
the OpenAPI document, with generated valid and invalid input, must never answer 5xx and
must answer what the document says (status, content type, body schema, auth)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from broker.openapi import document

from .conftest import ROOT, LiveBroker, running_brokers

TOKEN = "fuzz-token"
# A schema-valid request may still be refused on its merits: a callback the guard refuses
# (403) or one that does not echo the challenge (422). Anything else must be accepted.
# Every case logs in with our token (each security scheme of the document), unless it is a
# case about logging in itself: else nearly every generated case carries a random
# Authorization header and is refused 401 before the broker reads its body.
config = SchemathesisConfig.from_dict(
    {
        "auth": {"openapi": {"publishToken": {"bearer": TOKEN}, "manageToken": {"bearer": TOKEN}}},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2XX", "401", "403", "404", "422", "429", "503"]
            },
            # Invalid data must be refused; a body over GROKER_MAX_BODY_BYTES is refused
            # (413) before it is read, which schemathesis does not count as a refusal.
            "negative_data_rejection": {
                "expected-statuses": [
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "428",
                    "429",
                    "5XX",
                ]
            },
        },
    }
)
schema = schemathesis.openapi.from_dict(document(), config=config)
cases: Counter[str] = Counter()
statuses: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[LiveBroker]:
    """The broker under fuzz, with tokens on and one real subscriber, so that sync publishes
    are answered (not 504 after a timeout) and deliveries really happen."""
    sink = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sink_process.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    try:
        with running_brokers() as start:
            broker = start(
                GROKER_PUBLISH_TOKENS=TOKEN,
                GROKER_MANAGE_TOKENS=TOKEN,
                GROKER_SYNC_TIMEOUT="30",
                GROKER_ALLOWED_NETWORKS="127.0.0.1/32",
            )
            answer = requests.post(
                f"{broker.url}/subscriptions",
                json={"callback": f"http://127.0.0.1:{port}/hook"},
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
            yield broker
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        sink.stdout.close()
        artifacts = ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        (artifacts / "fuzz-cases.json").write_text(
            json.dumps(
                {
                    "total": sum(cases.values()),
                    "by_operation": dict(cases),
                    "by_status": dict(sorted(statuses.items())),
                },
                indent=1,
            )
        )


# The event stream never ends by design; test_dashboard.py reads it.
@schema.exclude(path="/dashboard/events").parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_live_broker_keeps_to_its_document(case, fuzzed: LiveBroker):
    operation = f"{case.method} {case.path}"
    cases[operation] += 1
    # OpenAPI cannot say that two header parameters exclude each other: a sync CloudEvent
    # has no callback (400, as a JSON body's; test_cloudevents.py checks it).
    headers = case.headers or {}
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and headers.get("groker-mode") == "sync":
        headers.pop("groker-callback", None)
    response = case.call_and_validate(base_url=fuzzed.url, timeout=60)
    statuses[f"{operation} {response.status_code}"] += 1
