"""The broker's HTTP API: a thin layer that turns requests into calls on `Broker`."""

from __future__ import annotations

from typing import TypeVar, cast

from flask import Blueprint, current_app, request, url_for
from pydantic import BaseModel, ValidationError

from broker import openapi
from broker.core import Broker, Draining, QueueFull
from broker.guard import RefusedDestination
from broker.requests_schema import PublishRequest, SubscribeRequest
from broker.sqlite_store import StoreError
from broker.verification import VerificationFailed
from groker_common.web import error

api = Blueprint("api", __name__)
Model = TypeVar("Model", bound=BaseModel)


def _broker() -> Broker:
    return cast(Broker, current_app.extensions["groker"])


def _parse(model: type[Model]) -> Model:
    """Validate the JSON body; the error handlers below turn failures into 4xx."""
    if not request.is_json:
        raise UnsupportedMedia()
    return model.model_validate_json(request.get_data(cache=False))


class UnsupportedMedia(Exception):
    pass


@api.errorhandler(UnsupportedMedia)
def _unsupported_media(_exc: UnsupportedMedia):
    return error(415, "unsupported media type", "send Content-Type: application/json")


@api.errorhandler(RefusedDestination)
def _refused(exc: RefusedDestination):
    return error(403, "callback not allowed", str(exc))


@api.errorhandler(VerificationFailed)
def _unverified(exc: VerificationFailed):
    return error(422, "callback verification failed", str(exc))


@api.errorhandler(StoreError)
def _store_failed(exc: StoreError):
    return error(503, "store unavailable", str(exc), Retry_After="5")


@api.errorhandler(ValidationError)
def _invalid(exc: ValidationError):
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    bad_json = any(e["type"] == "json_invalid" for e in exc.errors())
    return error(400, "malformed JSON" if bad_json else "invalid request", detail)


@api.post("/messages")
def publish():
    broker = _broker()
    req = _parse(PublishRequest)
    try:
        message = broker.publish(req.body, req.mode, req.headers, req.callback)
    except QueueFull:
        return error(503, "queue full", "try again later", Retry_After="1")
    except Draining:
        return error(503, "shutting down", "try again later", Retry_After="5")
    # A plain f-string: url_for costs a few percent of this, the hottest route.
    location = {"Location": f"/messages/{message.id}"}
    if req.mode == "async":
        return message.outcome(), 202, location
    outcome = broker.wait_published(message)
    if outcome == "published":
        return message.outcome(), 200
    if outcome == "draining":
        # Accepted and stored: it is published after the restart; poll Location for it.
        return message.outcome(), 503, {**location, "Retry-After": "5"}
    return message.outcome(), 504, location


@api.get("/messages/<message_id>")
def get_message(message_id: str):
    message = _broker().message(message_id)
    if message is None:
        return error(404, "not found", f"no message {message_id!r} (unknown or pruned)")
    return message.outcome()


@api.post("/subscriptions")
def subscribe():
    req = _parse(SubscribeRequest)
    subscriber, created = _broker().subscribe(req.callback)
    location = url_for("api.get_subscription", subscriber_id=subscriber.id)
    # The signing secret goes only to whoever subscribes the callback (and to a repeat of
    # that request, so a subscriber that restarts can learn it again); never listed.
    answer = {**subscriber.describe(), "secret": subscriber.secret}
    return answer, 201 if created else 200, {"Location": location}


@api.get("/subscriptions")
def list_subscriptions():
    lanes = _broker().registry.lanes()
    return {"subscriptions": [lane.subscriber.describe() for lane in lanes]}


@api.get("/subscriptions/<subscriber_id>")
def get_subscription(subscriber_id: str):
    subscriber = _broker().registry.get(subscriber_id)
    if subscriber is None:
        return error(404, "not found", f"no subscription {subscriber_id!r}")
    return subscriber.describe()


@api.delete("/subscriptions/<subscriber_id>")
def unsubscribe(subscriber_id: str):
    if not _broker().unsubscribe(subscriber_id):
        return error(404, "not found", f"no subscription {subscriber_id!r}")
    return "", 204


@api.get("/stats")
def stats():
    return _broker().stats()


@api.get("/openapi.json")
def openapi_document():
    return openapi.document()
