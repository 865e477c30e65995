"""The HTTP layer through Flask's test client: answers, status codes, and bad input."""

from __future__ import annotations

import json

import pytest

from bad_requests import BAD_INPUTS, BAD_KEYS, FIRST_KEYED
from groker_common.testing import wait_until

from .conftest import settings_for_tests


def test_async_publish_answers_202_with_id_seq_and_location(client):
    answer = client.post("/messages", json={"body": {"hello": 1}})
    assert answer.status_code == 202
    data = answer.get_json()
    assert data["status"] == "queued" and data["seq"] == 1
    assert answer.headers["Location"] == f"/messages/{data['id']}"
    polled = client.get(answer.headers["Location"]).get_json()
    assert polled == {"id": data["id"], "seq": 1, "status": "queued"}


def test_sync_publish_answers_after_delivery(client, make_sink):
    sinks = [make_sink() for _ in range(2)]
    for sink in sinks:
        assert client.post("/subscriptions", json={"callback": sink.url}).status_code == 201
    answer = client.post("/messages", json={"body": "s", "mode": "sync", "headers": {"a": "b"}})
    assert answer.status_code == 200
    data = answer.get_json()
    assert (data["status"], data["delivered"], data["failed"]) == ("published", 2, 0)
    for sink in sinks:  # already delivered when the answer came
        assert sink.received[-1]["id"] == data["id"]
        assert sink.received[-1]["headers"] == {"a": "b"}


def test_sync_publish_times_out_with_504_and_is_still_published_later(make_app, make_sink):
    client = make_app(settings_for_tests(sync_timeout=0.2)).test_client()
    answer = client.post("/messages", json={"body": "late", "mode": "sync"})
    assert answer.status_code == 504
    data = answer.get_json()
    assert data["status"] == "queued"
    sink = make_sink()
    client.post("/subscriptions", json={"callback": sink.url})
    wait_until(lambda: client.get(f"/messages/{data['id']}").get_json()["status"] == "published")
    assert sink.seqs == [data["seq"]]


def test_subscriptions_create_list_get_delete(client, make_sink):
    sink = make_sink()
    created = client.post("/subscriptions", json={"callback": sink.url})
    assert created.status_code == 201
    sub = created.get_json()
    assert set(sub) == {"id", "callback", "created_at", "secret", "max_batch", "max_wait_ms",
                        "format", "cloudevents_mode"}  # fmt: skip
    assert (sub["max_batch"], sub["max_wait_ms"]) == (1, 0)  # one message per POST
    assert (sub["format"], sub["cloudevents_mode"]) == ("groker", "binary")
    assert sub["secret"].startswith("whsec_")
    again = client.post("/subscriptions", json={"callback": sink.url})
    assert again.status_code == 200 and again.get_json()["id"] == sub["id"]
    del sub["secret"]  # told to the subscriber only, never listed
    assert client.get("/subscriptions").get_json() == {"subscriptions": [sub]}
    assert client.get(f"/subscriptions/{sub['id']}").get_json() == sub
    assert client.delete(f"/subscriptions/{sub['id']}").status_code == 204
    assert client.delete(f"/subscriptions/{sub['id']}").status_code == 404
    assert client.get("/subscriptions").get_json() == {"subscriptions": []}


def test_queue_full_answers_503_with_retry_after(make_app):
    client = make_app(settings_for_tests(max_queue_length=2)).test_client()
    for n in range(2):
        assert client.post("/messages", json={"body": n}).status_code == 202
    full = client.post("/messages", json={"body": 2})
    assert full.status_code == 503
    assert full.headers["Retry-After"] == "1"
    assert full.get_json()["error"] == "queue full"


def test_health_and_readiness(client, app):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    app.extensions["groker"].draining = True
    assert client.get("/readyz").status_code == 503
    refused = client.post("/messages", json={"body": 1})
    assert refused.status_code == 503 and "Retry-After" in refused.headers


@pytest.mark.parametrize(
    ("method", "path", "raw", "content_type", "status", "message"),
    BAD_INPUTS,
    ids=[f"{i:02d}-{row[0]}-{row[4]}" for i, row in enumerate(BAD_INPUTS)],
)
def test_bad_input_gets_a_clear_4xx_and_leaves_the_queue_alone(
    client, method, path, raw, content_type, status, message
):
    before = [client.post("/messages", json={"body": n}).get_json() for n in range(3)]
    answer = client.open(path, method=method, data=raw, content_type=content_type)
    assert answer.status_code == status
    assert answer.is_json, answer.data[:200]
    error = answer.get_json()
    assert error["error"] == message
    assert error["detail"]
    stats = client.get("/stats").get_json()
    assert (stats["accepted"], stats["queue_length"]) == (3, 3)
    after = [client.get(f"/messages/{m['id']}").get_json() for m in before]
    assert [m["seq"] for m in after] == [1, 2, 3]
    assert all(m["status"] == "queued" for m in after)


@pytest.mark.parametrize(("key", "raw", "status", "message"), BAD_KEYS)
def test_a_bad_idempotency_key_gets_a_clear_4xx_and_creates_nothing(
    client, key, raw, status, message
):
    first_key, first_body = FIRST_KEYED

    def publish(key: str, raw: str):
        headers = {"Idempotency-Key": key}
        return client.post("/messages", data=raw, content_type="application/json", headers=headers)

    bound = publish(first_key, first_body).get_json()
    answer = publish(key, raw)
    assert (answer.status_code, answer.get_json()["error"]) == (status, message)
    assert answer.get_json()["detail"]
    stats = client.get("/stats").get_json()
    assert (stats["accepted"], stats["queue_length"]) == (1, 1)
    assert client.get(f"/messages/{bound['id']}").get_json()["seq"] == 1


def test_validation_errors_name_the_field(client):
    answer = client.post("/messages", json={"body": 1, "mode": "later"})
    detail = answer.get_json()["detail"]
    assert detail[0]["field"] == "mode"
    assert "sync" in detail[0]["message"]
    assert json.dumps(detail)  # plain JSON, no objects the client cannot read
