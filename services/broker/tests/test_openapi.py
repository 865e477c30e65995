"""The OpenAPI document is valid, and it and the routes agree, both ways."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate

from broker.openapi import document


def test_the_document_is_valid_openapi_3_1():
    validate(document())


def test_every_route_is_documented_and_every_documented_route_exists(app):
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.endswith("static"):
            continue  # the dashboard's own files
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in document()["paths"].items() for method in item}
    assert routes == documented


def test_the_document_is_served(client):
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.get_json()["paths"].keys() == document()["paths"].keys()


def test_the_document_describes_the_cloudevents_requests():
    paths = document()["paths"]
    single, batch = paths["/messages"]["post"], paths["/messages/batch"]["post"]
    event = {"$ref": "#/components/schemas/CloudEvent"}
    assert single["requestBody"]["content"]["application/cloudevents+json"]["schema"] == event
    batch_schema = batch["requestBody"]["content"]["application/cloudevents-batch+json"]
    assert batch_schema["schema"]["items"] == event
    assert "ce-" in single["description"]  # binary mode, which has no body schema
    for operation in (single, batch):
        headers = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert headers["groker-mode"]["enum"] == ["sync", "async"]
        assert headers["groker-callback"]["format"] == "uri"
    schema = document()["components"]["schemas"]["CloudEvent"]
    assert schema["required"] == ["specversion", "id", "source", "type"]


def test_the_cloudevent_schema_and_the_broker_agree(client):
    """What the schema takes, the broker takes, and what it refuses, the broker refuses."""
    from jsonschema import Draft202012Validator

    schema = document()["components"]["schemas"]["CloudEvent"]
    valid = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    event = {"specversion": "1.0", "id": "a", "source": "/s", "type": "t", "data": [1]}
    for extra, ok in [
        ({}, True),
        ({"time": "2026-01-02T03:04:05.5+01:00", "subject": "s", "dataschema": "x"}, True),
        ({"datacontenttype": "Application/JSON; charset=utf-8"}, True),
        ({"datacontenttype": "application/vnd.x+json"}, True),
        ({"n": 2**31 - 1, "b": True, "s": ""}, True),
        ({"datacontenttype": "text/plain"}, False),
        ({"time": "2026-01-02"}, False),
        ({"n": 2**31}, False),
        ({"Upper": "x"}, False),
        ({"data_base64": "aGk="}, False),
        ({"specversion": "0.3"}, False),
        ({"id": ""}, False),
        ({"x": None}, False),
        ({f"e{i}": i for i in range(61)}, False),  # 65 attributes
        ({f"e{i}": i for i in range(60)}, True),  # 64
    ]:
        request = event | extra
        assert valid.is_valid(request) == ok, extra
        answer = client.post(
            "/messages",
            data=json.dumps(request),
            headers={"Content-Type": "application/cloudevents+json"},
        )
        assert (answer.status_code == 202) == ok, (extra, answer.get_json())
