"""Delivering as CloudEvents: a subscriber with `format: cloudevents` gets every message as
a CloudEvent (spec 1.0, HTTP binding), binary or structured, batches as a JSON array of
structured events; checked with the CloudEvents SDK's own parser, as a subscriber would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import http as core_http
from cloudevents.core.bindings.http import HTTPMessage
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1.http import CloudEvent, from_dict, from_http

from broker.core import Broker
from broker.model import Message
from broker.wiring import build_broker
from groker_common.signatures import verify
from groker_common.testing import wait_until

from .conftest import Sink, settings_for_tests


def http_headers(recorded: dict[str, str]) -> dict[str, str]:
    """A sink's recorded WSGI variables back as HTTP header names (lowercase)."""
    return {
        name.removeprefix("HTTP_").replace("_", "-").lower(): value
        for name, value in recorded.items()
    }


def events_received(sink: Sink, index: int = 0) -> CloudEvent:
    return from_http(http_headers(sink.headers[index]), sink.raw[index])


def assert_is_the_message(event: CloudEvent, message: Message, source: str = "/groker") -> None:
    assert event["specversion"] == "1.0"
    assert (event["id"], event["source"], event["type"]) == (message.id, source, "groker.message")
    assert event["datacontenttype"] == "application/json"
    assert message.published_at is not None
    published = datetime.fromtimestamp(message.published_at, UTC)
    assert datetime.fromisoformat(event["time"]) == published
    assert int(event["seq"]) == message.seq
    assert event.data == json.loads(message.body_json)


def publish_and_wait(broker: Broker, body: Any, headers: dict[str, str] | None = None) -> Message:
    message = broker.publish(body, mode="sync", headers=headers)
    assert broker.wait_published(message) == "published"
    return message


def test_a_binary_subscriber_gets_ce_headers_and_the_body_as_data(broker, make_sink):
    sink = make_sink()
    subscriber, _ = broker.subscribe(sink.url, format="cloudevents")
    assert subscriber.cloudevents_mode == "binary"  # the default
    message = publish_and_wait(broker, {"order": 7, "items": ["a", "é"]}, {"kind": "order"})
    headers = http_headers(sink.headers[0])
    assert headers["content-type"] == "application/json"
    assert headers["ce-id"] == message.id and headers["ce-seq"] == str(message.seq)
    assert json.loads(sink.raw[0]) == {"order": 7, "items": ["a", "é"]}
    assert_is_the_message(events_received(sink), message)
    # Groker headers are not carried (names need not be valid extension names).
    assert "ce-kind" not in headers and "kind" not in events_received(sink).get_attributes()
    verify(subscriber.secret, sink.raw[0], headers)


def test_a_structured_subscriber_gets_the_event_as_json(make_app, make_sink):
    app = make_app(settings_for_tests(cloudevents_source="urn:groker:test"))
    broker = app.extensions["groker"]
    sink = make_sink()
    answer = app.test_client().post(
        "/subscriptions",
        json={"callback": sink.url, "format": "cloudevents", "cloudevents_mode": "structured"},
    )
    assert answer.status_code == 201
    assert (answer.get_json()["format"], answer.get_json()["cloudevents_mode"]) == (
        "cloudevents",
        "structured",
    )
    message = publish_and_wait(broker, [1, "two", None])
    headers = http_headers(sink.headers[0])
    assert headers["content-type"] == "application/cloudevents+json"
    assert not any(name.startswith("ce-") for name in headers)
    event = json.loads(sink.raw[0])
    assert event["seq"] == message.seq  # an integer in JSON
    assert event["data"] == [1, "two", None]
    assert_is_the_message(events_received(sink), message, source="urn:groker:test")
    verify(answer.get_json()["secret"], sink.raw[0], headers)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_batch_subscriber_gets_an_array_of_structured_events(broker, make_sink, mode):
    sink = make_sink()
    subscriber, _ = broker.subscribe(
        sink.url, max_batch=10, max_wait_ms=300, format="cloudevents", cloudevents_mode=mode
    )
    messages = [broker.publish({"n": n}) for n in range(3)]
    wait_until(lambda: sum(len(json.loads(raw)) for raw in sink.raw) == 3, what="all three")
    headers = http_headers(sink.headers[0])
    assert headers["content-type"] == "application/cloudevents-batch+json"
    events = [from_dict(event) for raw in sink.raw for event in json.loads(raw)]
    for event, message in zip(events, messages, strict=True):
        assert_is_the_message(event, message)
    for raw, recorded in zip(sink.raw, sink.headers, strict=True):
        verify(subscriber.secret, raw, http_headers(recorded))  # one signature per POST


def test_a_groker_subscriber_next_to_a_cloudevents_one_gets_the_envelope(broker, make_sink):
    plain, binary, structured = make_sink(), make_sink(), make_sink()
    broker.subscribe(plain.url)
    broker.subscribe(binary.url, format="cloudevents")
    broker.subscribe(structured.url, format="cloudevents", cloudevents_mode="structured")
    message = publish_and_wait(broker, {"x": 1}, {"kind": "k"})
    (envelope,) = plain.received
    assert set(envelope) == {"id", "seq", "body", "headers", "published_at"}
    assert (envelope["id"], envelope["body"], envelope["headers"]) == (message.id, {"x": 1},
                                                                       {"kind": "k"})  # fmt: skip
    assert http_headers(plain.headers[0])["content-type"] == "application/json"
    assert_is_the_message(events_received(binary), message)
    assert_is_the_message(events_received(structured), message)
    assert message.delivered == 3


def test_each_encoding_is_made_once_for_all_subscribers(broker, make_sink):
    sinks = [make_sink() for _ in range(3)]
    for sink in sinks:
        broker.subscribe(sink.url, format="cloudevents", cloudevents_mode="structured")
    message = publish_and_wait(broker, "same")
    assert len({sink.raw[0] for sink in sinks}) == 1
    assert message._encodings is None  # dropped once published


def test_format_and_mode_survive_a_restart(durable_store, make_sink):
    sink = make_sink()
    first = build_broker(durable_store)
    first.start()
    subscriber, _ = first.subscribe(
        sink.url, max_batch=3, format="cloudevents", cloudevents_mode="structured"
    )
    plain, _ = first.subscribe(make_sink().url)
    first.stop()
    second = build_broker(durable_store)
    second.start()
    try:
        restored = {s.id: s for s in second.subscriptions()}
        kept = restored[subscriber.id]
        assert (kept.format, kept.cloudevents_mode, kept.max_batch) == (
            "cloudevents",
            "structured",
            3,
        )
        assert (restored[plain.id].format, restored[plain.id].cloudevents_mode) == (
            "groker",
            "binary",
        )
        message = publish_and_wait(second, "after")
        assert_is_the_message(from_dict(json.loads(sink.raw[0])[0]), message)
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("wrong", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"format": 1}, "format"),
        ({"format": "cloudevents", "cloudevents_mode": "text"}, "cloudevents_mode"),
        ({"cloudevents_mode": None}, "cloudevents_mode"),
    ],
)
def test_a_bad_format_or_mode_is_refused(client, make_sink, wrong, field):
    refused = client.post("/subscriptions", json={"callback": make_sink().url, **wrong})
    assert refused.status_code == 400
    assert refused.get_json()["detail"][0]["field"] == field
    assert client.get("/subscriptions").get_json() == {"subscriptions": []}


# --- publishing CloudEvents: POST /messages with a structured or binary event ---------
ORDER = {
    "specversion": "1.0",
    "id": "order-7",
    "source": "https://shop.example/orders",
    "type": "com.example.order.created",
    "subject": "orders/7",
    "tenant": "acme",
    "priority": 3,
    "urgent": True,
    "data": {"order": 7},
}
WITHOUT_DATA = {k: v for k, v in ORDER.items() if k != "data"}
STRUCTURED = {"Content-Type": "application/cloudevents+json"}
BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/sensors/a%20b",  # percent-encoded, as the binding asks
    "ce-type": "com.example.reading",
    "ce-time": "2026-01-02T03:04:05Z",
    "ce-unit": "celsius",
}


def post_event(client, event: dict[str, Any] = ORDER, **headers: str):
    return client.post(
        "/messages", data=json.dumps(event), headers=STRUCTURED | headers_of(headers)
    )


def headers_of(named: dict[str, str]) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in named.items()}


def subscribe_all(client, make_sink) -> tuple[Sink, Sink, Sink]:
    plain, binary, structured = make_sink(), make_sink(), make_sink()
    for sink, fields in (
        (plain, {}),
        (binary, {"format": "cloudevents"}),
        (structured, {"format": "cloudevents", "cloudevents_mode": "structured"}),
    ):
        answer = client.post("/subscriptions", json={"callback": sink.url, **fields})
        assert answer.status_code == 201
    return plain, binary, structured


def test_a_structured_event_is_delivered_as_the_same_event(client, make_sink):
    plain, binary, structured = subscribe_all(client, make_sink)
    answer = post_event(client, groker_mode="sync")
    assert answer.status_code == 200, answer.get_json()
    status = answer.get_json()
    assert status["id"] != "order-7"  # the message keeps groker's own id
    assert client.get(f"/messages/{status['id']}").get_json()["status"] == "published"
    for sink in (binary, structured):
        event = events_received(sink)
        attributes = event.get_attributes()
        for name in ("id", "source", "type", "subject", "tenant"):
            assert attributes[name] == ORDER[name], name
        assert int(attributes["priority"]) == 3 and int(attributes["seq"]) == status["seq"]
        assert event.data == {"order": 7}
        assert datetime.fromisoformat(attributes["time"]) == datetime.fromtimestamp(
            status["published_at"], UTC
        )
    # A groker subscriber: the data as body, the attributes as ce- headers.
    (envelope,) = plain.received
    assert (envelope["id"], envelope["seq"], envelope["body"]) == (status["id"], status["seq"],
                                                                   {"order": 7})  # fmt: skip
    assert envelope["headers"] == {
        "ce-specversion": "1.0",
        "ce-id": "order-7",
        "ce-source": "https://shop.example/orders",
        "ce-type": "com.example.order.created",
        "ce-subject": "orders/7",
        "ce-tenant": "acme",
        "ce-priority": "3",
        "ce-urgent": "true",
    }
    # Binary mode writes an integer or a boolean as the binding does.
    assert http_headers(binary.headers[0])["ce-urgent"] == "true"


def test_a_binary_event_is_published_with_its_headers_and_body(client, make_sink):
    _, binary, structured = subscribe_all(client, make_sink)
    answer = client.post(
        "/messages", data=b"[21.5, 22]", headers=BINARY | {"Content-Type": "application/json"}
    )
    assert answer.status_code == 202, answer.get_json()
    wait_until(lambda: binary.raw and structured.raw, what="both deliveries")
    for sink in (binary, structured):
        # The SDK's 2.x parser: the 1.x one does not percent-decode binary-mode headers.
        received = HTTPMessage(http_headers(sink.headers[0]), sink.raw[0])
        event = core_http.from_http(received, JSONFormat(), CoreEvent)
        assert (event.get_id(), event.get_source(), event.get_type()) == (
            "evt-1",
            "/sensors/a b",
            "com.example.reading",
        )
        assert event.get_extension("unit") == "celsius" and event.get_data() == [21.5, 22]
        assert event.get_time() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert http_headers(binary.headers[0])["ce-source"] == "/sensors/a%20b"


def test_an_event_with_a_callback_notifies_it(client, make_sink):
    notified = make_sink()
    client.post("/subscriptions", json={"callback": make_sink().url, "format": "cloudevents"})
    answer = post_event(client, groker_callback=notified.url)
    assert answer.status_code == 202
    wait_until(lambda: notified.received, what="the notification")
    assert notified.received[0]["id"] == answer.get_json()["id"]


def test_an_event_is_published_once_per_idempotency_key(client):
    key = {"Idempotency-Key": "event-1"}
    first = post_event(client, **key)
    again = post_event(client, **key)
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # The same data under other attributes is another request; so is the data as JSON.
    other = post_event(client, {**ORDER, "type": "com.example.order.cancelled"}, **key)
    assert other.status_code == 422
    assert client.post("/messages", json={"body": {"order": 7}}, headers=key).status_code == 422
    assert client.get("/stats").get_json()["accepted"] == 1


@pytest.mark.parametrize(
    ("headers", "body", "says"),
    [
        (STRUCTURED, {k: v for k, v in ORDER.items() if k != "specversion"}, "specversion"),
        (STRUCTURED, {k: v for k, v in ORDER.items() if k != "id"}, "id"),
        (STRUCTURED, {k: v for k, v in ORDER.items() if k not in ("source", "type")}, "source"),
        (STRUCTURED, {**ORDER, "specversion": "0.3"}, "specversion"),
        (STRUCTURED, {**ORDER, "id": 7}, "id"),
        (STRUCTURED, {**ORDER, "Bad-Name": "x"}, "Bad-Name"),
        (STRUCTURED, {**ORDER, "nested": {"a": 1}}, "nested"),
        (STRUCTURED, {**ORDER, "datacontenttype": "text/plain", "data": "hi"}, "JSON data"),
        (STRUCTURED, {**WITHOUT_DATA, "data_base64": "aGk="}, "data_base64"),
        (STRUCTURED, [ORDER], "object"),
        ({k: v for k, v in BINARY.items() if k != "ce-type"}, [1], "type"),
        (BINARY | {"Content-Type": "application/json"}, "{not json", "not JSON"),
    ],
)
def test_an_invalid_event_is_refused_with_what_is_wrong(client, headers, body, says):
    data = body if isinstance(body, str) else json.dumps(body)
    refused = client.post("/messages", data=data, headers=headers)
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid CloudEvent"
    assert says in refused.get_json()["detail"]
    assert client.get("/stats").get_json()["accepted"] == 0


def test_bad_groker_options_on_an_event_are_refused(client):
    assert post_event(client, groker_mode="later").status_code == 400
    refused = post_event(client, groker_mode="sync", groker_callback="http://127.0.0.1:1/")
    assert refused.status_code == 400


def test_a_published_event_survives_a_restart(durable_store, make_sink):
    from broker.cloudevents import parse_event

    first = build_broker(durable_store)
    first.start()
    body, attributes = parse_event(STRUCTURED, json.dumps(ORDER).encode())
    queued = first.publish(body, attributes=attributes)
    first.stop()
    second = build_broker(durable_store)
    second.start()
    try:
        assert second.message(queued.id).attributes == attributes  # type: ignore[union-attr]
        sink = make_sink()
        second.subscribe(sink.url, format="cloudevents", cloudevents_mode="structured")
        wait_until(lambda: sink.raw, what="the event after the restart")
        event = events_received(sink)
        assert (event["id"], event["type"], event["tenant"], event.data) == (
            "order-7",
            "com.example.order.created",
            "acme",
            {"order": 7},
        )
    finally:
        second.stop()


def test_an_event_takes_an_integral_number_as_the_integer_it_is(client, make_sink):
    _, binary, _ = subscribe_all(client, make_sink)
    assert post_event(client, {**ORDER, "priority": 3.0}, groker_mode="sync").status_code == 200
    assert http_headers(binary.headers[0])["ce-priority"] == "3"


@pytest.mark.parametrize(
    ("headers", "body", "says"),
    [
        (STRUCTURED, {**ORDER, "time": "20260102T030405Z"}, "time"),  # ISO 8601, not RFC 3339
        (STRUCTURED, {**ORDER, "time": "2026-02-30T00:00:00Z"}, "time"),
        (STRUCTURED, {**ORDER, "priority": 2**31}, "priority"),  # the spec's integers: 32 bits
        (STRUCTURED, {**ORDER, "priority": 1.5}, "priority"),
        (STRUCTURED, {**ORDER, "name\n": "x"}, "lowercase letters and digits"),
        (STRUCTURED, {**ORDER, "datacontenttype": "application/json\r\nx: y+json"}, "JSON"),
        (BINARY | {"ce-time": "2026-01-02", "Content-Type": "application/json"}, [1], "time"),
    ],
)
def test_an_event_is_held_to_the_spec_where_the_sdk_is_lenient(client, headers, body, says):
    refused = client.post("/messages", data=json.dumps(body), headers=headers)
    assert refused.status_code == 400
    assert says in refused.get_json()["detail"]
    assert client.get("/stats").get_json()["accepted"] == 0


def test_a_single_events_fingerprint_is_what_it_was_before_batches_of_events():
    """Keys stored before batches of events existed must still match their requests."""
    from broker.model import fingerprint

    attributes = {k: v for k, v in ORDER.items() if k not in ("data", "subject", "urgent")}
    bound = fingerprint([('{"order":7}', None)], "async", None, False, [attributes])
    assert bound == "7861cc8fea83d49eee0df893f40cb1cad84060191e5d5c33dc8eb402adb27388"


# --- publishing CloudEvents in a batch: POST /messages/batch, JSON batch format ---------
EVENT_BATCH = {"Content-Type": "application/cloudevents-batch+json"}


def orders(*numbers: int) -> list[CoreEvent]:
    """Events made with the SDK (which fills in each one's time)."""
    return [
        CoreEvent(
            {
                "id": f"order-{n}",
                "source": "https://shop.example/orders",
                "type": "com.example.order.created",
                "subject": f"orders/{n}",
                "tenant": "acme",
                "priority": n,
            },
            {"order": n},
        )
        for n in numbers
    ]


def sdk_batch(events: list[CoreEvent]) -> bytes:
    """The JSON batch format: an array of events, each written by the SDK's JSON format."""
    return b"[" + b",".join(JSONFormat().write(event) for event in events) + b"]"


def post_batch(client, body: bytes | str, **headers: str):
    return client.post("/messages/batch", data=body, headers=EVENT_BATCH | headers_of(headers))


def assert_same_event(received: CoreEvent, sent: CoreEvent, seq: int) -> None:
    assert (received.get_id(), received.get_source(), received.get_type()) == (
        sent.get_id(),
        sent.get_source(),
        sent.get_type(),
    )
    assert received.get_subject() == sent.get_subject()
    assert received.get_extension("tenant") == "acme"
    assert int(received.get_extension("priority")) == sent.get_extension("priority")
    assert int(received.get_extension("seq")) == seq
    assert received.get_time() == sent.get_time()
    assert received.get_data() == sent.get_data()


def test_a_batch_of_events_goes_out_as_the_same_events_in_consecutive_seqs(client, make_sink):
    _, binary, structured = subscribe_all(client, make_sink)
    batched = make_sink()
    subscribed = client.post(
        "/subscriptions",
        json={"callback": batched.url, "format": "cloudevents", "max_batch": 10,
              "max_wait_ms": 100},
    )  # fmt: skip
    assert subscribed.status_code == 201
    sent = orders(1, 2, 3)
    answer = post_batch(client, sdk_batch(sent), groker_mode="sync")
    assert answer.status_code == 200, answer.get_json()
    statuses = answer.get_json()["messages"]
    seqs = [status["seq"] for status in statuses]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert {status["status"] for status in statuses} == {"published"}
    # What each subscriber got, read as it would: the SDK's HTTP binding (binary or
    # structured, one event a POST), and its JSON format for each event of a batch.
    for sink in (binary, structured):
        received = [
            core_http.from_http(HTTPMessage(http_headers(h), raw), JSONFormat(), CoreEvent)
            for h, raw in zip(sink.headers, sink.raw, strict=True)
        ]
        for event, original, seq in zip(received, sent, seqs, strict=True):
            assert_same_event(event, original, seq)
    assert http_headers(binary.headers[0])["ce-id"] == "order-1"
    assert http_headers(structured.headers[0])["content-type"] == "application/cloudevents+json"
    in_batches = [
        JSONFormat().read(CoreEvent, json.dumps(event)) for raw in batched.raw
        for event in json.loads(raw)
    ]  # fmt: skip
    for event, original, seq in zip(in_batches, sent, seqs, strict=True):
        assert_same_event(event, original, seq)


def test_an_async_batch_of_events_notifies_the_groker_callback(client, make_sink):
    subscribe_all(client, make_sink)
    notified = make_sink()
    answer = post_batch(client, sdk_batch(orders(1, 2)), groker_callback=notified.url)
    assert answer.status_code == 202
    ids = [status["id"] for status in answer.get_json()["messages"]]
    wait_until(lambda: len(notified.received) == 2, what="two notifications")
    assert sorted(n["id"] for n in notified.received) == sorted(ids)


def test_a_batch_of_events_is_published_once_per_idempotency_key(client):
    key = {"Idempotency_Key": "events-1"}
    batch = sdk_batch(orders(1, 2))
    first = post_batch(client, batch, **key)
    again = post_batch(client, batch, **key)
    assert first.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # Another attribute of one event, the same events sync, the same data as a JSON batch,
    # or the first event alone: each another request.
    changed = json.loads(batch)
    changed[1]["tenant"] = "other"
    assert post_batch(client, json.dumps(changed), **key).status_code == 422
    assert post_batch(client, batch, groker_mode="sync", **key).status_code == 422
    as_json = {"messages": [{"body": {"order": 1}}, {"body": {"order": 2}}]}
    assert client.post("/messages/batch", json=as_json, headers=headers_of(key)).status_code == 422
    assert post_event(client, json.loads(batch)[0], **key).status_code == 422
    assert client.get("/stats").get_json()["accepted"] == 2


VALID = json.loads(sdk_batch(orders(0, 1, 2, 3)))


def spoilt(index: int, **changes: Any) -> str:
    """VALID with one event changed (a None removes an attribute)."""
    events = json.loads(json.dumps(VALID))
    events[index] = {k: v for k, v in {**events[index], **changes}.items() if v is not None}
    return json.dumps(events)


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        (spoilt(3, type=None), [(3, "type")]),
        (spoilt(1, time="yesterday"), [(1, "time")]),
        (spoilt(2, data_base64="aGk="), [(2, "data_base64")]),
        (spoilt(0, **{"Bad-Name": "x"}), [(0, "Bad-Name")]),
        (spoilt(0, datacontenttype="text/plain"), [(0, "datacontenttype")]),
        (spoilt(1, specversion="0.3"), [(1, "specversion")]),
        (spoilt(2, nested={"a": 1}), [(2, "nested")]),
        (json.dumps([*VALID[:3], 7]), [(3, None)]),
        (
            json.dumps([VALID[0], {"id": "x"}, VALID[2], {**VALID[3], "id": ""}]),
            [(1, "specversion"), (3, "id")],  # each bad event named
        ),
        (json.dumps(VALID[0]), [(None, None)]),  # an event, not a batch of them
        ("[]", [(None, None)]),
        (json.dumps([*VALID, VALID[0]]), [(None, None)]),  # more than GROKER_MAX_BATCH (4)
        ("[{not json", [(None, None)]),
    ],
)
def test_a_bad_batch_of_events_names_each_bad_event_and_accepts_nothing(make_app, body, problems):
    app = make_app(settings_for_tests(max_batch=4))
    client = app.test_client()
    assert post_batch(client, json.dumps(VALID)).status_code == 202  # the valid one is taken
    refused = post_batch(client, body)
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "invalid CloudEvent batch"
    detail = refused.get_json()["detail"]
    assert [(problem["index"], problem["field"]) for problem in detail] == problems
    for problem in detail:
        if problem["index"] is not None:
            assert problem["message"].startswith(f"event {problem['index']}: ")
    assert client.get("/stats").get_json()["accepted"] == 4


def test_bad_groker_headers_are_refused_whatever_the_batch(client):
    batch = sdk_batch(orders(1))
    refused = post_batch(client, batch, groker_mode="later")
    assert refused.status_code == 400
    assert refused.get_json()["detail"][0]["field"] == "groker-mode"
    sync_with_callback = post_batch(
        client, batch, groker_mode="sync", groker_callback="http://127.0.0.1:1/"
    )
    assert sync_with_callback.status_code == 400
    # Checked on a JSON batch too, which takes its mode from its body.
    as_json = client.post(
        "/messages/batch",
        json={"messages": [{"body": 1}]},
        headers={"groker-callback": "not a url"},
    )
    assert as_json.status_code == 400
    assert as_json.get_json()["detail"][0]["field"] == "groker-callback"
    assert client.get("/stats").get_json()["accepted"] == 0


def test_a_published_batch_of_events_survives_a_restart(durable_store, make_sink):
    from broker.cloudevents import parse_batch

    sent = orders(1, 2, 3)
    events = parse_batch(sdk_batch(sent), limit=10)
    first = build_broker(durable_store)
    first.start()
    queued, _ = first.publish_batch(
        [(body, None) for body, _ in events], attributes=[attributes for _, attributes in events]
    )
    first.stop()
    second = build_broker(durable_store)
    second.start()
    try:
        for message, (_, attributes) in zip(queued, events, strict=True):
            kept = second.message(message.id)
            assert kept is not None and kept.attributes == attributes
        sink = make_sink()
        second.subscribe(sink.url, format="cloudevents", cloudevents_mode="structured")
        wait_until(lambda: len(sink.raw) == 3, what="the events after the restart")
        for raw, original, message in zip(sink.raw, sent, queued, strict=True):
            received = JSONFormat().read(CoreEvent, raw)
            assert_same_event(received, original, message.seq)
    finally:
        second.stop()
