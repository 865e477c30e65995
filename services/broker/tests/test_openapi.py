"""The OpenAPI document is valid, and it and the routes agree, both ways."""

from __future__ import annotations

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
