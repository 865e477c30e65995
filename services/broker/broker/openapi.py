"""The broker's OpenAPI 3.1 document, served at /openapi.json, generated from the operations
the routes declare (operations.route): their paths, scopes, request models and the models
their answers are built with. A test checks that every route is in it and nothing else."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

# Imported for the operations they declare.
from broker import dashboard, routes  # noqa: F401
from broker.operations import OPERATIONS, Documented, Operation, declare, route
from broker.schemas import SCHEMAS, Error, Health

spec = Blueprint("spec", __name__)

# What each error answer means, wherever it is given.
ERRORS = {
    400: "invalid request",
    401: "missing or wrong bearer token",
    403: "callback destination not allowed",
    404: "not found",
    409: "the first request with this Idempotency-Key is still being written (see Retry-After)",
    413: "body too large",
    415: "not JSON (nor a CloudEvent where one is taken)",
    422: "callback did not echo the challenge, or an Idempotency-Key sent with another request",
    429: "rate limited (see Retry-After)",
    431: "too many or too large headers",
    503: "queue full or stopping (see Retry-After)",
}
# The routes every groker service serves (groker_common.web, groker_common.metrics).
for shared in (
    Operation("get", "/healthz", "healthz", {200: Documented("alive", Health)}),
    Operation(
        "get",
        "/readyz",
        "readyz",
        {200: Documented("ready", Health), 503: Documented("starting or draining", Error)},
    ),
    Operation(
        "get",
        "/metrics",
        "metrics",
        {
            200: Documented(
                "Prometheus metrics", content_type="text/plain", schema={"type": "string"}
            )
        },
    ),
):
    declare(shared)


def _content(reply: Documented) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        schema = {"$ref": f"#/components/schemas/{reply.model.__name__}"}
        answer["content"] = {"application/json": {"schema": schema}}
    elif reply.content_type is not None or reply.schema is not None:
        media: dict[str, Any] = {} if reply.schema is None else {"schema": reply.schema}
        answer["content"] = {reply.content_type or "application/json": media}
    return answer


def _operation(op: Operation) -> dict[str, Any]:
    errors = {*op.errors, 431} | ({401, 429} if op.scope else set())
    replies = {code: Documented(ERRORS[code], Error) for code in sorted(errors)} | op.replies
    item: dict[str, Any] = {"operationId": op.operation_id}
    if op.description is not None:
        item["description"] = op.description
    if op.scope is not None:
        item["security"] = [{f"{op.scope}Token": []}]
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in op.parameters
    ]
    if op.headers is not None:
        parameters += _header_parameters(op.headers)
    if parameters:
        item["parameters"] = parameters
    if op.request is not None:
        ref = {"$ref": f"#/components/schemas/{op.request.__name__}"}
        content = {"application/json": {"schema": ref}}
        content |= {kind: {"schema": schema} for kind, schema in op.other_requests.items()}
        item["requestBody"] = {"required": True, "content": content}
    item["responses"] = {str(code): _content(reply) for code, reply in replies.items()}
    return item


def _header_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema(by_alias=True)["properties"]
    parameters = []
    for name, schema in properties.items():
        # Optional headers are simply left out: the parameter's schema is the non-null one.
        options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
        parameters.append(
            {
                "name": name,
                "in": "header",
                "required": False,
                "description": schema.get("description", ""),
                "schema": options[0],
            }
        )
    return parameters


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for op in OPERATIONS:
        for model in (op.request, *(r.model for r in op.replies.values())):
            if model is not None:
                found[model.__name__] = model
    found[Error.__name__] = Error
    return list(found.values())


def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(model, "validation") for model in _models()],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "groker broker",
            "version": "1.0.0",
            "description": "One FIFO queue, published to webhook subscribers.",
        },
        "paths": paths,
        "components": {
            "schemas": defs["$defs"] | SCHEMAS,
            "securitySchemes": {
                "publishToken": {"type": "http", "scheme": "bearer"},
                "manageToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


@route(
    spec,
    "GET",
    "/openapi.json",
    replies={200: Documented("this document", schema={"type": "object"})},
)
def openapi() -> dict[str, Any]:
    return document()
