"""What the broker's HTTP API takes and answers, as pydantic models: requests are validated
with them in one step from the raw JSON bytes, answers are built with them, and the OpenAPI
document is generated from them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from broker.cloudevents import (
    INTEGER_RANGE,
    JSON_MEDIA_TYPE,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
)
from broker.model import JsonText, encode_body, integral

if TYPE_CHECKING:
    from broker.model import Message, Subscriber

MAX_URL_LENGTH = 2048


# A '%' that does not start %XX: no URI (RFC 3986), as the document's "format": "uri" says.
BAD_PERCENT = re.compile("%(?![0-9A-Fa-f]{2})")


def _absolute_http_url(url: str) -> str:
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if port == 0:
        raise ValueError("port 0 is not a valid destination")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("must not contain whitespace or control characters")
    if BAD_PERCENT.search(url):
        raise ValueError("a % must start a percent-encoding (%XX, two hex digits)")
    return url


# What the document says a callback looks like; the validator above is the authority.
CALLBACK_JSON_SCHEMA = {
    "type": "string",
    "format": "uri",
    "maxLength": MAX_URL_LENGTH,
    "pattern": r"^https?://[A-Za-z0-9._-]+(:[1-9][0-9]{0,4})?(/([A-Za-z0-9._~/-]|%[0-9A-Fa-f]{2})*)?$",
}
CallbackUrl = Annotated[
    StrictStr, AfterValidator(_absolute_http_url), WithJsonSchema(CALLBACK_JSON_SCHEMA)
]


def _strict_json(value: Any) -> JsonText:
    try:
        return encode_body(value)
    except ValueError:
        raise ValueError(
            "NaN, Infinity and numbers too large for a double are not JSON (RFC 8259)"
        ) from None


# Python's JSON parser (and pydantic's) take NaN, Infinity and 1e999 (as inf); strict parsers
# (Go, JavaScript, Java) refuse them, so the broker must neither accept nor deliver them.
# The check is the encoding itself: the validated body is its JSON text, encoded once.
StrictJson = Annotated[Any, AfterValidator(_strict_json)]

# A message's headers are kept with it while it is queued and sent with every delivery:
# bounded in number and size (and counted against GROKER_MAX_QUEUE_BYTES).
MAX_HEADERS = 64
MAX_HEADER_NAME = 128
MAX_HEADER_VALUE = 4096
HeaderName = Annotated[StrictStr, StringConstraints(max_length=MAX_HEADER_NAME)]
HeaderValue = Annotated[StrictStr, StringConstraints(max_length=MAX_HEADER_VALUE)]


class MessageContent(BaseModel):
    """One message as published: alone (PublishRequest) or in a batch (BatchRequest)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    body: StrictJson = Field(description="any JSON value, delivered as is")
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, max_length=MAX_HEADERS, description="kept and delivered as is"
    )


class PublishOptions(BaseModel):
    """How a publisher hears of the outcome: in the answer (sync) or, async, at a callback."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # A sync publisher hears the outcome in its answer: a callback is for async only.
        json_schema_extra={
            "if": {"properties": {"mode": {"const": "sync"}}, "required": ["mode"]},
            "then": {"properties": {"callback": {"type": "null"}}},
        },
    )

    mode: Literal["sync", "async"] = "async"
    callback: CallbackUrl | None = Field(
        None, description="async only: told when the message (each message) is published"
    )

    @model_validator(mode="after")
    def _callback_is_for_async(self) -> PublishOptions:
        if self.mode == "sync" and self.callback is not None:
            raise ValueError("callback is for async messages only")
        return self


class PublishRequest(MessageContent, PublishOptions):
    pass


class BatchRequest(PublishOptions):
    # At most GROKER_MAX_BATCH: checked where the settings are (the route).
    messages: list[MessageContent] = Field(
        min_length=1, description="published in this order, with consecutive seqs"
    )


MAX_IDEMPOTENCY_KEY = 255


class PublishHeaders(BaseModel):
    """The request headers publishing reads (besides Authorization and Content-Type), each
    checked whenever it is sent."""

    model_config = ConfigDict(populate_by_name=False)

    idempotency_key: (
        Annotated[
            StrictStr,
            StringConstraints(min_length=1, max_length=MAX_IDEMPOTENCY_KEY, pattern=r"^[ -~]+$"),
        ]
        | None
    ) = Field(
        None,
        alias="Idempotency-Key",
        description="publish once: the same key with the same request, again within"
        " GROKER_IDEMPOTENCY_SECONDS, answers what the first answered (with"
        " Idempotent-Replayed: true) and creates nothing; with another request, 422;"
        " scoped to the bearer token",
    )
    groker_mode: Literal["sync", "async"] | None = Field(
        None,
        alias="groker-mode",
        description="with CloudEvents (which have no envelope for it): sync or async (the"
        " default); a JSON request says it in its body's `mode`",
    )
    groker_callback: CallbackUrl | None = Field(
        None,
        alias="groker-callback",
        description="with async CloudEvents: told when the message (each message) is"
        " published; a JSON request says it in its body's `callback`",
    )


# A CloudEvent as published (structured mode, alone or in a batch): what
# cloudevents.parse_structured takes, which the CloudEvents SDK, not pydantic, reads.
def _attribute(**constraints: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": MAX_ATTRIBUTE_VALUE, **constraints}


CLOUD_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "a CloudEvent (spec 1.0) in the JSON format: its data becomes the message"
    " body, its other attributes are kept with the message and delivered with it",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": _attribute(),
        "source": _attribute(),
        "type": _attribute(),
        "datacontenttype": _attribute(pattern=JSON_MEDIA_TYPE, description="JSON only"),
        "time": {"type": "string", "format": "date-time", "description": "RFC 3339"},
        "subject": _attribute(),
        "dataschema": _attribute(),
        "data": {"description": "any JSON value: the message body"},
    },
    # Extensions: named with lowercase letters and digits; a string, an integer of 32 bits
    # or a boolean (the spec's other types are strings in JSON).
    "propertyNames": {"pattern": "^[a-z0-9]+$"},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": MAX_ATTRIBUTE_VALUE},
            {"type": "integer", "minimum": INTEGER_RANGE[0], "maximum": INTEGER_RANGE[1]},
            {"type": "boolean"},
        ]
    },
    # At most MAX_ATTRIBUTES attributes, data aside.
    "if": {"required": ["data"]},
    "then": {"maxProperties": MAX_ATTRIBUTES + 1},
    "else": {"maxProperties": MAX_ATTRIBUTES},
}
CLOUD_EVENT_REF = {"$ref": "#/components/schemas/CloudEvent"}
CLOUD_EVENT_BATCH: dict[str, Any] = {
    "type": "array",
    "description": "CloudEvents in the JSON batch format, published in this order with"
    " consecutive seqs (at most GROKER_MAX_BATCH)",
    "minItems": 1,
    "items": CLOUD_EVENT_REF,
}
# The schemas no model makes, for the document's components.
SCHEMAS: dict[str, dict[str, Any]] = {"CloudEvent": CLOUD_EVENT}


MAX_DELIVERY_BATCH = 1000
MAX_WAIT_MS = 1000


# The strict models would refuse 382.0 as a float, though JSON Schema calls it an integer.
JsonInteger = Annotated[int, BeforeValidator(integral)]


class SubscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    callback: CallbackUrl
    max_batch: JsonInteger = Field(
        1,
        ge=1,
        le=MAX_DELIVERY_BATCH,
        description="above 1: up to this many messages per POST, always as a JSON array",
    )
    max_wait_ms: JsonInteger = Field(
        0, ge=0, le=MAX_WAIT_MS, description="how long to wait for more before a short batch"
    )
    format: Literal["groker", "cloudevents"] = Field(
        "groker", description="groker's envelope, or each message as a CloudEvent (spec 1.0)"
    )
    cloudevents_mode: Literal["binary", "structured"] = Field(
        "binary",
        description="CloudEvents over HTTP: ce- headers and the data as the body, or the"
        " event as application/cloudevents+json; batches are always structured",
    )


# --- answers -----------------------------------------------------------------------------
class Answer(BaseModel):
    def body(self) -> dict[str, Any]:
        """The JSON object to send: fields that do not apply (None) are left out."""
        return self.model_dump(exclude_none=True)


class Error(Answer):
    error: str
    detail: Any = None


class MessageStatus(Answer):
    id: str
    seq: int = Field(ge=1)
    status: Literal["queued", "published"]
    delivered: int | None = None
    failed: int | None = None
    published_at: float | None = None

    @classmethod
    def of(cls, message: Message) -> MessageStatus:
        """What the publisher is told, by HTTP answer, callback or GET /messages/<id>."""
        if message.status != "published":
            return cls.model_construct(id=message.id, seq=message.seq, status=message.status)
        return cls.model_construct(
            id=message.id,
            seq=message.seq,
            status=message.status,
            delivered=message.delivered,
            failed=message.failed,
            published_at=message.published_at,
        )


class BatchStatus(Answer):
    messages: list[MessageStatus]

    @classmethod
    def of(cls, messages: list[Message]) -> BatchStatus:
        return cls.model_construct(messages=[MessageStatus.of(m) for m in messages])

    def body(self) -> dict[str, Any]:
        return {"messages": [m.body() for m in self.messages]}


class Subscription(Answer):
    id: str
    callback: str
    created_at: float
    max_batch: int
    max_wait_ms: int
    format: Literal["groker", "cloudevents"]
    cloudevents_mode: Literal["binary", "structured"]

    @classmethod
    def of(cls, subscriber: Subscriber) -> Subscription:
        return cls.model_construct(**subscriber.describe())


class NewSubscription(Subscription):
    secret: str = Field(description="Standard Webhooks secret signing every delivery")

    @classmethod
    def of(cls, subscriber: Subscriber) -> NewSubscription:
        # The signing secret goes only to whoever subscribes the callback (and to a repeat
        # of that request, so a subscriber that restarts can learn it again); never listed.
        return cls.model_construct(**subscriber.describe(), secret=subscriber.secret)


class SubscriptionList(Answer):
    subscriptions: list[Subscription]


class Health(Answer):
    status: str
