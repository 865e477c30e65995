"""The broker's HTTP API: a thin layer that turns requests into calls on `Broker`, each
route declared once with its scope and answers (operations.route)."""

from __future__ import annotations

from typing import TypeVar, cast

from flask import Blueprint, current_app, request
from flask.blueprints import BlueprintSetupState
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import UnsupportedMediaType
from werkzeug.routing import BaseConverter

from broker.access import caller
from broker.cloudevents import (
    BATCH,
    STRUCTURED,
    InvalidBatch,
    InvalidEvent,
    is_batch,
    is_event,
    parse_batch,
    parse_event,
)
from broker.core import Broker
from broker.errors import (
    ChallengeFailed,
    Draining,
    KeyInUse,
    KeyReused,
    NotSequenced,
    QueueFull,
    RefusedDestination,
    Standby,
    StoreError,
)
from broker.model import Message, Mode, WaitResult
from broker.operations import Documented, route
from broker.publishing import Publishing
from broker.schemas import (
    CLOUD_EVENT_BATCH,
    CLOUD_EVENT_REF,
    BatchRequest,
    BatchStatus,
    MessageStatus,
    NewSubscription,
    PublishHeaders,
    PublishOptions,
    PublishRequest,
    SubscribeRequest,
    Subscription,
    SubscriptionList,
)
from groker_common.web import error

api = Blueprint("api", __name__)


class MessageId(BaseConverter):
    """A message id: anything but `batch`, so that /messages/batch is the batch route only
    (OPTIONS there must not advertise GET)."""

    regex = r"(?!batch$)[^/]+"


@api.record_once
def _converters(state: BlueprintSetupState) -> None:
    state.app.url_map.converters["message_id"] = MessageId


Model = TypeVar("Model", bound=BaseModel)


def current_broker() -> Broker:
    """This replica's broker; a standby has none yet, and one that may have lost the queue
    must not answer from what it remembers (503, see `_standby`)."""
    broker = current_app.extensions.get("groker")
    replica = current_app.extensions.get("groker_replica")
    if broker is None or (replica is not None and not replica.owning):
        raise Standby()
    return cast(Broker, broker)


def current_publisher() -> Publishing:
    """Who takes a publish on this replica: its broker, or a standby's acceptor."""
    replica = current_app.extensions.get("groker_replica")
    if replica is not None and replica.acceptor is not None and not replica.owning:
        return replica.acceptor
    return current_broker()


def _parse(model: type[Model]) -> Model:
    """Validate the JSON body; the error handlers below turn failures into 4xx."""
    if not request.is_json:
        raise UnsupportedMediaType("send Content-Type: application/json")
    return model.model_validate_json(request.get_data(cache=False))


# What each refusal of the core is, over HTTP: status, error, and Retry-After if any.
@api.errorhandler(QueueFull)
def _queue_full(_exc: QueueFull):
    return error(503, "queue full", "try again later", Retry_After=str(QueueFull.retry_after))


@api.errorhandler(Draining)
def _draining(_exc: Draining):
    return error(503, "shutting down", "try again later", Retry_After=str(Draining.retry_after))


@api.errorhandler(StoreError)
def _store_failed(exc: StoreError):
    return error(503, "store unavailable", str(exc), Retry_After=str(StoreError.retry_after))


@api.app_errorhandler(Standby)
def _standby(_exc: Standby):
    return error(
        503,
        "standby",
        "another broker replica owns the queue; this one takes over if it stops",
        Retry_After=str(Standby.retry_after),
    )


@api.errorhandler(NotSequenced)
def _not_sequenced(exc: NotSequenced):
    return error(
        504,
        "not sequenced yet",
        {
            "ids": exc.ids,
            "message": "accepted into the cluster's inbox, where it is durable, but no replica"
            " owns the queue to give it its seq yet: it is published once one does (ask again"
            " with the same Idempotency-Key for its seq, or GET /messages/<id>)",
        },
    )


@api.errorhandler(RefusedDestination)
def _refused(exc: RefusedDestination):
    return error(403, "callback not allowed", str(exc))


@api.errorhandler(ChallengeFailed)
def _unconfirmed(exc: ChallengeFailed):
    return error(422, "callback verification failed", str(exc))


@api.errorhandler(KeyReused)
def _key_reused(_exc: KeyReused):
    return error(
        422,
        "idempotency key reused",
        "this Idempotency-Key was first sent with another request (body, mode, headers or"
        " callback); it stays bound to that message: send a new key for a new message",
    )


@api.errorhandler(KeyInUse)
def _key_in_use(_exc: KeyInUse):
    return error(
        409,
        "idempotency key in use",
        "the first request with this Idempotency-Key is still being written; ask again",
        Retry_After=str(KeyInUse.retry_after),
    )


@api.errorhandler(ValidationError)
def _invalid(exc: ValidationError):
    detail = [
        {"field": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    bad_json = any(e["type"] == "json_invalid" for e in exc.errors())
    return error(400, "malformed JSON" if bad_json else "invalid request", detail)


@route(
    api,
    "POST",
    "/messages",
    scope="publish",
    request=PublishRequest,
    other_requests={STRUCTURED: CLOUD_EVENT_REF},
    headers=PublishHeaders,
    description="Publish one message: a JSON request, or a CloudEvent (spec 1.0, HTTP"
    " binding), structured (application/cloudevents+json) or binary (its attributes as ce-"
    " headers, percent-encoded, and its JSON data as the body, with a JSON Content-Type)."
    " A CloudEvent's data is the message body and its other attributes are kept and"
    " delivered with it; its mode and callback come as the groker-mode and groker-callback"
    " headers.",
    replies={
        200: Documented("sync: published", MessageStatus),
        202: Documented("async: queued", MessageStatus),
        504: Documented(
            "sync: not yet published; still queued. (In cluster mode, a replica that could not"
            " reach an owner of the queue within the sync timeout answers {error, detail: {ids,"
            " message}} instead: the message waits in the cluster's inbox.)",
            MessageStatus,
        ),
    },
    errors=(400, 403, 409, 413, 415, 422, 503),
)
def publish():
    broker = current_publisher()
    headers = _publish_headers()
    key = _scoped_key(headers)
    if is_event(request.content_type, request.headers.keys()):
        return _publish_event(broker, headers, key)
    req = _parse(PublishRequest)
    message, replayed = broker.publish_once(key, req.body, req.mode, req.headers, req.callback)
    return _published(broker, message, req.mode, replayed)


def _publish_event(broker: Publishing, headers: PublishHeaders, key: str | None):
    """POST /messages with a CloudEvent (structured, or binary: ce- headers): its data is
    the body, its other attributes are kept with the message."""
    options = _event_options(headers)
    try:
        body, attributes = parse_event(request.headers, request.get_data(cache=False))
    except InvalidEvent as exc:
        return error(400, "invalid CloudEvent", str(exc))
    message, replayed = broker.publish_once(
        key, body, options.mode, callback=options.callback, attributes=attributes
    )
    return _published(broker, message, options.mode, replayed)


def _event_options(headers: PublishHeaders) -> PublishOptions:
    """`mode` and `callback` for CloudEvents, which have no envelope to carry them: the
    groker-mode and groker-callback headers, checked together as a JSON body's are."""
    sent = {"mode": headers.groker_mode, "callback": headers.groker_callback}
    return PublishOptions.model_validate({k: v for k, v in sent.items() if v is not None})


def _published(broker: Publishing, message: Message, mode: Mode, replayed: bool):
    """The answer to a publish of one message: at once (async), or once published (sync)."""
    # A plain f-string: url_for costs a few percent of this, the hottest route.
    headers = {"Location": f"/messages/{message.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if mode == "async":
        return MessageStatus.of(message).body(), 202, headers
    outcome = broker.wait_published(message)
    return MessageStatus.of(message).body(), *_sync_answer(outcome, headers)


@route(
    api,
    "POST",
    "/messages/batch",
    scope="publish",
    request=BatchRequest,
    other_requests={BATCH: CLOUD_EVENT_BATCH},
    headers=PublishHeaders,
    description="Publish messages with consecutive seqs, in one durable write: a JSON"
    " request, or CloudEvents in the JSON batch format (application/cloudevents-batch+json),"
    " each taken as POST /messages takes a structured event, with the groker-mode and"
    " groker-callback headers for the whole batch.",
    replies={
        200: Documented("sync: every message published", BatchStatus),
        202: Documented("async: every message queued", BatchStatus),
        504: Documented(
            "sync: not all published yet; all still queued. (In cluster mode, as for POST"
            " /messages: {error, detail: {ids, message}} while no replica owns the queue.)",
            BatchStatus,
        ),
    },
    errors=(400, 403, 409, 413, 415, 422, 503),
    operation_id="publish_batch",
)
def publish_batch():
    broker = current_publisher()
    headers = _publish_headers()
    key = _scoped_key(headers)
    if is_batch(request.content_type):
        return _publish_event_batch(broker, headers, key)
    req = _parse(BatchRequest)
    limit = broker.settings.max_batch
    if len(req.messages) > limit:
        detail = [{"field": "messages", "message": f"at most {limit} messages in one batch"}]
        return error(400, "invalid request", detail)
    items = [(m.body, m.headers) for m in req.messages]
    messages, replayed = broker.publish_batch(items, req.mode, req.callback, key)
    return _published_batch(broker, messages, req.mode, replayed)


def _publish_event_batch(broker: Publishing, headers: PublishHeaders, key: str | None):
    """POST /messages/batch with CloudEvents: each event one message of the batch, with
    its attributes, as a structured event alone to POST /messages."""
    options = _event_options(headers)
    try:
        events = parse_batch(request.get_data(cache=False), broker.settings.max_batch)
    except InvalidBatch as exc:
        return error(400, "invalid CloudEvent batch", exc.problems)
    items = [(body, None) for body, _ in events]
    attributes = [event_attributes for _, event_attributes in events]
    messages, replayed = broker.publish_batch(
        items, options.mode, options.callback, key, attributes
    )
    return _published_batch(broker, messages, options.mode, replayed)


def _published_batch(broker: Publishing, messages: list[Message], mode: Mode, replayed: bool):
    """The answer to a batch publish: at once (async), or once all are published (sync)."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    if mode == "async":
        return BatchStatus.of(messages).body(), 202, headers
    outcome = broker.wait_all_published(messages)
    return BatchStatus.of(messages).body(), *_sync_answer(outcome, headers)


# The publish headers by name, and what a request that sends none of them has.
PUBLISH_HEADERS = tuple(field.alias or name for name, field in PublishHeaders.model_fields.items())
NO_PUBLISH_HEADERS = PublishHeaders()


def _publish_headers() -> PublishHeaders:
    """The publish headers the request sends, checked whatever its body: a malformed one
    is a 400 even where the body does not use it (a JSON request's mode and callback are
    in its body), as the OpenAPI document promises."""
    sent = {name: request.headers[name] for name in PUBLISH_HEADERS if name in request.headers}
    return PublishHeaders.model_validate(sent) if sent else NO_PUBLISH_HEADERS


def _scoped_key(headers: PublishHeaders) -> str | None:
    """The request's Idempotency-Key, scoped to the caller's token."""
    key = headers.idempotency_key
    return None if key is None else f"{caller()}/{key}"


def _sync_answer(outcome: WaitResult, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """The status of a sync publisher's answer, and its headers."""
    if outcome == "published":
        return 200, headers
    if outcome == "draining":
        # Accepted and stored: published after the restart; poll GET /messages/<id>.
        return 503, headers | {"Retry-After": str(Draining.retry_after)}
    return 504, headers


@route(
    api,
    "GET",
    "/messages/<message_id:message_id>",
    scope="publish",
    replies={200: Documented("the message's status", MessageStatus)},
    errors=(404,),
)
def get_message(message_id: str):
    message = current_broker().message(message_id)
    if message is None:
        return error(404, "not found", f"no message {message_id!r} (unknown or pruned)")
    return MessageStatus.of(message).body()


@route(
    api,
    "POST",
    "/subscriptions",
    scope="manage",
    request=SubscribeRequest,
    replies={
        201: Documented("subscribed", NewSubscription),
        200: Documented("that callback was subscribed already", NewSubscription),
    },
    errors=(400, 403, 413, 415, 422, 503),
)
def subscribe():
    req = _parse(SubscribeRequest)
    subscriber, created = current_broker().subscribe(
        req.callback,
        req.max_batch,
        req.max_wait_ms,
        format=req.format,
        cloudevents_mode=req.cloudevents_mode,
    )
    location = f"/subscriptions/{subscriber.id}"
    return NewSubscription.of(subscriber).body(), 201 if created else 200, {"Location": location}


@route(
    api,
    "GET",
    "/subscriptions",
    scope="manage",
    replies={200: Documented("current subscriptions", SubscriptionList)},
)
def list_subscriptions():
    listed = [Subscription.of(s) for s in current_broker().subscriptions()]
    return SubscriptionList(subscriptions=listed).body()


@route(
    api,
    "GET",
    "/subscriptions/<subscriber_id>",
    scope="manage",
    replies={200: Documented("the subscription", Subscription)},
    errors=(404,),
)
def get_subscription(subscriber_id: str):
    subscriber = current_broker().subscription(subscriber_id)
    if subscriber is None:
        return error(404, "not found", f"no subscription {subscriber_id!r}")
    return Subscription.of(subscriber).body()


@route(
    api,
    "DELETE",
    "/subscriptions/<subscriber_id>",
    scope="manage",
    replies={204: Documented("unsubscribed")},
    errors=(404,),
)
def unsubscribe(subscriber_id: str):
    if not current_broker().unsubscribe(subscriber_id):
        return error(404, "not found", f"no subscription {subscriber_id!r}")
    return "", 204


@route(
    api,
    "GET",
    "/stats",
    replies={200: Documented("counters", schema={"type": "object"})},
)
def stats():
    return current_broker().stats().as_dict()
