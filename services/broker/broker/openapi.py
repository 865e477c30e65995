"""The broker's OpenAPI 3.1 document, served at /openapi.json.

Request bodies come from the same pydantic models the routes validate with, so the document
cannot drift from what is accepted; a test checks that every route is in it and nothing else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from broker.requests_schema import PublishRequest, SubscribeRequest


class Error(BaseModel):
    error: str
    detail: Any = None


class MessageStatus(BaseModel):
    id: str
    seq: int = Field(ge=1)
    status: Literal["queued", "published"]
    delivered: int | None = None
    failed: int | None = None
    published_at: float | None = None


class Subscription(BaseModel):
    id: str
    callback: str
    created_at: float


class NewSubscription(Subscription):
    secret: str = Field(description="Standard Webhooks secret signing every delivery")


class SubscriptionList(BaseModel):
    subscriptions: list[Subscription]


class Health(BaseModel):
    status: str


MODELS: list[type[BaseModel]] = [
    PublishRequest,
    SubscribeRequest,
    Error,
    MessageStatus,
    Subscription,
    NewSubscription,
    SubscriptionList,
    Health,
]


def _json(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {
        400: "invalid request",
        401: "missing or wrong bearer token",
        403: "callback destination not allowed",
        404: "not found",
        413: "body too large",
        415: "not JSON",
        422: "callback did not echo the challenge",
        429: "rate limited (see Retry-After)",
        431: "too many or too large headers",
        503: "queue full or stopping (see Retry-After)",
    }
    return {str(code): _json("Error", names[code]) for code in codes}


COMMON = (401, 429, 431)


def document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(model, "validation") for model in MODELS], ref_template="#/components/schemas/{model}"
    )
    message_id = {
        "name": "message_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    subscriber_id = {
        "name": "subscriber_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    publish_security = [{"publishToken": []}]
    manage_security = [{"manageToken": []}]
    open_json = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "groker broker",
            "version": "1.0.0",
            "description": "One FIFO queue, published to webhook subscribers.",
        },
        "paths": {
            "/messages": {
                "post": {
                    "operationId": "publish",
                    "security": publish_security,
                    "requestBody": {"required": True, **_json("PublishRequest", "the message")},
                    "responses": {
                        "200": _json("MessageStatus", "sync: published"),
                        "202": _json("MessageStatus", "async: queued"),
                        "504": _json("MessageStatus", "sync: not yet published; still queued"),
                        **_errors(400, 403, 413, 415, 503, *COMMON),
                    },
                }
            },
            "/messages/{message_id}": {
                "get": {
                    "operationId": "get_message",
                    "security": publish_security,
                    "parameters": [message_id],
                    "responses": {
                        "200": _json("MessageStatus", "the message's status"),
                        **_errors(404, *COMMON),
                    },
                }
            },
            "/subscriptions": {
                "post": {
                    "operationId": "subscribe",
                    "security": manage_security,
                    "requestBody": {"required": True, **_json("SubscribeRequest", "the callback")},
                    "responses": {
                        "201": _json("NewSubscription", "subscribed"),
                        "200": _json("NewSubscription", "that callback was subscribed already"),
                        **_errors(400, 403, 413, 415, 422, 503, *COMMON),
                    },
                },
                "get": {
                    "operationId": "list_subscriptions",
                    "security": manage_security,
                    "responses": {
                        "200": _json("SubscriptionList", "current subscriptions"),
                        **_errors(*COMMON),
                    },
                },
            },
            "/subscriptions/{subscriber_id}": {
                "get": {
                    "operationId": "get_subscription",
                    "security": manage_security,
                    "parameters": [subscriber_id],
                    "responses": {
                        "200": _json("Subscription", "the subscription"),
                        **_errors(404, *COMMON),
                    },
                },
                "delete": {
                    "operationId": "unsubscribe",
                    "security": manage_security,
                    "parameters": [subscriber_id],
                    "responses": {"204": {"description": "unsubscribed"}, **_errors(404, *COMMON)},
                },
            },
            "/stats": {
                "get": {
                    "operationId": "stats",
                    "responses": {"200": _json(open_json, "counters"), **_errors(431)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "responses": {"200": _json("Health", "alive"), **_errors(431)},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": _json("Health", "ready"),
                        **_errors(431),
                        "503": _json("Error", "starting or draining"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(431),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "responses": {"200": _json(open_json, "this document"), **_errors(431)},
                }
            },
            "/": {
                "get": {
                    "operationId": "dashboard",
                    "responses": {
                        "200": {"description": "the live dashboard", "content": {"text/html": {}}},
                        **_errors(431),
                    },
                }
            },
            "/dashboard/snapshot": {
                "get": {
                    "operationId": "dashboard_snapshot",
                    "responses": {
                        "200": _json(open_json, "what the dashboard shows"),
                        **_errors(431),
                    },
                }
            },
            "/dashboard/events": {
                "get": {
                    "operationId": "dashboard_events",
                    "responses": {
                        "200": {
                            "description": "snapshots as server-sent events, every second",
                            "content": {"text/event-stream": {}},
                        },
                        **_errors(431),
                    },
                }
            },
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "publishToken": {"type": "http", "scheme": "bearer"},
                "manageToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }
