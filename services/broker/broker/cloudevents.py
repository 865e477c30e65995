"""CloudEvents (spec 1.0, HTTP protocol binding): messages delivered as events to the
subscribers that asked for them (`format: cloudevents`), and events published to
POST /messages (`parse_event`) and, as a JSON batch of events, to POST /messages/batch
(`parse_batch`).

Each message is one event: `id` the message id, `source` GROKER_CLOUDEVENTS_SOURCE, `type`
`groker.message`, `time` its publication, `data` its body (JSON), and the extension `seq`.
The message's groker headers are not carried: header names need not be valid extension
names (lowercase letters and digits only), and a partial mapping would surprise. A message
that was published as a CloudEvent is delivered as that event (its id, source, type,
time, extensions...), with `seq` added.

Encodings are made by hand, not with the SDK: the body is already JSON text and is spliced
in, as for groker's own envelope, and each message is encoded at most once per encoding
(`Message.encoded`), whatever the number of subscribers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from dateutil.parser import isoparse

from broker.model import (
    JsonText,
    Message,
    Subscriber,
    attribute_headers,
    encode_body,
    integral,
)
from groker_common.webhooks import BATCH, STRUCTURED  # one definition, the receivers' too

SPECVERSION = "1.0"
EVENT_TYPE = "groker.message"
DEFAULT_SOURCE = "/groker"
DATA_CONTENT_TYPE = "application/json"
# Binary mode header values: the spec asks for space, '"', '%' and anything outside
# printable ASCII to be percent-encoded (as UTF-8).
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


class CloudEventsFormat:
    """Encodes messages as CloudEvents, with this broker's `source`."""

    def __init__(self, source: str = DEFAULT_SOURCE) -> None:
        self.source = source

    def attributes(self, message: Message) -> dict[str, Any]:
        """The event's context attributes (everything but `data`): a published CloudEvent's
        own (its id, source, type, extensions...), else this broker's; `seq` either way."""
        if message.attributes:
            published = message.published_at or message.accepted_at
            return {
                "specversion": SPECVERSION,
                "time": rfc3339(published),
                "datacontenttype": DATA_CONTENT_TYPE,
                **message.attributes,
                "seq": message.seq,
            }
        return {
            "specversion": SPECVERSION,
            "id": message.id,
            "source": self.source,
            "type": EVENT_TYPE,
            "time": rfc3339(message.published_at or message.accepted_at),
            "datacontenttype": DATA_CONTENT_TYPE,
            "seq": message.seq,
        }

    def structured(self, message: Message) -> bytes:
        """The event as one JSON object (structured mode, and an element of a batch)."""
        return message.encoded("cloudevents", self._structured)

    def _structured(self, message: Message) -> bytes:
        event = json.dumps(self.attributes(message), separators=(",", ":"))
        # Splice the already-encoded body in rather than decoding and encoding it again.
        return f'{event[:-1]},"data":{message.body_json}}}'.encode()

    def binary(self, message: Message) -> tuple[dict[str, str], bytes]:
        """Binary mode: the attributes as `ce-` headers, the data as the body."""
        attributes = self.attributes(message)
        # The binding's Content-Type is the event's datacontenttype, not a ce- header.
        headers = {"Content-Type": attributes.pop("datacontenttype")}
        for name, value in attribute_headers(attributes).items():
            headers[name] = quote(value, safe=HEADER_SAFE)
        return headers, message.encoded("data", lambda m: m.body_json.encode())

    def delivery(
        self, subscriber: Subscriber, messages: list[Message]
    ) -> tuple[dict[str, str], bytes]:
        """The headers (beyond signature and user agent) and the body of one POST to a
        CloudEvents subscriber: a batch subscriber always gets an array of structured
        events, even of one, as a groker-format one always gets an array."""
        if subscriber.max_batch > 1:
            batch = b"[" + b",".join(self.structured(m) for m in messages) + b"]"
            return {"Content-Type": BATCH}, batch
        (message,) = messages
        if subscriber.cloudevents_mode == "binary":
            return self.binary(message)
        return {"Content-Type": STRUCTURED}, self.structured(message)


# --- publishing: CloudEvents sent to POST /messages and POST /messages/batch ----------
REQUIRED = ("specversion", "id", "source", "type")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE = 4096
# The spec's Integer: a signed 32-bit whole number.
INTEGER_RANGE = (-(2**31), 2**31 - 1)
# RFC 3339, which the spec asks `time` to be; the SDK's parser would take any ISO 8601.
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _any_case(text: str) -> str:
    """A regular expression for `text` in any letter case: the document's patterns are
    ECMA 262 regular expressions, which have no flags."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


# What groker carries as data: JSON (application/json or any +json type, in any case,
# parameters allowed). One pattern for the check and for the OpenAPI document (schemas.py),
# printable ASCII only, since a binary-mode subscriber gets it as its Content-Type header.
JSON_MEDIA_TYPE = (
    rf"^ *({_any_case('application/json')}|[!-:<-~]*\+{_any_case('json')}) *(;[ -~]*)?$"
)
_JSON_MEDIA_TYPE = re.compile(JSON_MEDIA_TYPE)
# The SDK checks names with re.match and `$`, which lets a final newline through.
ATTRIBUTE_NAME = re.compile("[a-z0-9]+")


class InvalidEvent(ValueError):
    """A published CloudEvent groker cannot take (400); `field` names the attribute at
    fault, where there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidBatch(ValueError):
    """A CloudEvents batch groker cannot take (400): what is wrong with it, or with each bad
    event in it (by its index)."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(problem["message"] for problem in problems))
        self.problems = problems


def is_event(content_type: str | None, header_names: Iterable[str]) -> bool:
    """Whether a publish request is a CloudEvent: structured (its content type) or binary
    (any ce- header)."""
    if _media_type(content_type) == STRUCTURED:
        return True
    return any(name.lower().startswith("ce-") for name in header_names)


def is_batch(content_type: str | None) -> bool:
    """Whether a batch publish request is a CloudEvents batch (the JSON batch format)."""
    return _media_type(content_type) == BATCH


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def parse_event(headers: Mapping[str, str], body: bytes) -> tuple[JsonText, dict[str, Any]]:
    """A published CloudEvent (binary or structured), read with the SDK: its data as the
    message body (JSON text) and its other attributes. Raises InvalidEvent."""
    lowered = {name.lower(): value for name, value in headers.items()}
    if not any(name.startswith("ce-") for name in lowered):
        return parse_structured(_json(body, "the event"))
    raw = {name[3:]: value for name, value in lowered.items() if name.startswith("ce-")}
    _require(raw)
    sent_time = unquote(raw["time"]) if "time" in raw else None
    if sent_time is not None:
        _time(sent_time)
    message = http.HTTPMessage(lowered, body)
    event = _built(lambda: http.from_binary(message, JSONFormat(), CloudEvent))
    data = _json(body, "the data (the request body)", field="data") if body else None
    return _message(event, sent_time, data)


def parse_batch(body: bytes, limit: int) -> list[tuple[JsonText, dict[str, Any]]]:
    """A published CloudEvents batch (application/cloudevents-batch+json: a JSON array of
    structured events), each event read as `parse_structured` reads one alone. Raises
    InvalidBatch naming every bad event by its index, so nothing of a bad batch is taken."""
    try:
        events = _json(body, "the batch")
    except InvalidEvent as exc:
        raise InvalidBatch([_problem(None, exc)]) from None
    if not isinstance(events, list) or not events:
        raise InvalidBatch([_problem(None, InvalidEvent("a non-empty JSON array of events"))])
    if len(events) > limit:
        raise InvalidBatch([_problem(None, InvalidEvent(f"at most {limit} events in one batch"))])
    parsed, problems = [], []
    for index, raw in enumerate(events):
        try:
            parsed.append(parse_structured(raw))
        except InvalidEvent as exc:
            problems.append(_problem(index, exc))
    if problems:
        raise InvalidBatch(problems)
    return parsed


def _problem(index: int | None, exc: InvalidEvent) -> dict[str, Any]:
    where = "" if index is None else f"event {index}: "
    return {"index": index, "field": exc.field, "message": f"{where}{exc}"}


def parse_structured(raw: Any) -> tuple[JsonText, dict[str, Any]]:
    """One structured event, decoded from JSON: a request's whole body, or one event of a
    batch. Raises InvalidEvent."""
    if not isinstance(raw, dict):
        raise InvalidEvent("an event must be a JSON object")
    _require(raw)
    if "data_base64" in raw:
        raise InvalidEvent("groker carries JSON data only, not data_base64", "data_base64")
    # What the SDK's JSON format does before it builds the event, on the object decoded
    # once: its time as a datetime, its data apart.
    attributes = {name: integral(value) for name, value in raw.items() if name != "data"}
    sent_time = attributes.get("time")
    if "time" in attributes:
        attributes["time"] = _time(sent_time)
    event = _built(lambda: CloudEvent(attributes, raw.get("data")))
    return _message(event, sent_time, event.get_data())


def _require(raw: Mapping[str, Any]) -> None:
    # The SDK fills in a missing id, specversion or time: say what is missing instead.
    missing = [name for name in REQUIRED if name not in raw]
    if missing:
        raise InvalidEvent(f"missing required attribute(s): {', '.join(missing)}", missing[0])


def _json(body: bytes, what: str, field: str | None = None) -> Any:
    try:
        return json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        raise InvalidEvent(f"{what} is not JSON", field) from None


def _time(value: Any) -> datetime:
    """`time` as the SDK wants it, once checked to be RFC 3339."""
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise InvalidEvent("time: an RFC 3339 timestamp", "time")
    try:
        return isoparse(value)
    except ValueError as exc:
        raise InvalidEvent(f"time: {exc}", "time") from None


def _built(build: Callable[[], BaseCloudEvent]) -> BaseCloudEvent:
    """The event the SDK builds (and validates), or InvalidEvent saying what it found."""
    try:
        return build()
    except CloudEventValidationError as exc:
        raise InvalidEvent(str(exc), next(iter(exc.errors), None)) from None
    except (BaseCloudEventException, ValueError, TypeError, AttributeError) as exc:
        raise InvalidEvent(str(exc), getattr(exc, "attribute_name", None)) from None


def _message(
    event: BaseCloudEvent, sent_time: str | None, data: Any
) -> tuple[JsonText, dict[str, Any]]:
    """The message body and the attributes kept with it."""
    attributes = event.get_attributes()
    if sent_time is not None:  # kept as sent, once checked
        attributes["time"] = sent_time
    else:  # the SDK's default: groker gives the time of publication instead
        attributes.pop("time", None)
    _check_attributes(attributes)
    try:
        return encode_body(data), attributes
    except ValueError:
        raise InvalidEvent(
            "NaN, Infinity and numbers too large for a double are not JSON", "data"
        ) from None


def _check_attributes(attributes: dict[str, Any]) -> None:
    """What the SDK lets through but groker cannot carry: non-JSON data, and attributes
    that do not fit a header (bounded like a message's headers) or are no CloudEvents
    type."""
    kind = attributes.get("datacontenttype")
    if kind is not None and not _JSON_MEDIA_TYPE.fullmatch(kind):
        raise InvalidEvent(f"groker carries JSON data only, not {kind!r}", "datacontenttype")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEvent(f"at most {MAX_ATTRIBUTES} attributes")
    low, high = INTEGER_RANGE
    for name, value in attributes.items():
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidEvent(f"attribute {name!r}: lowercase letters and digits only", name)
        if not isinstance(value, str | int | bool):
            raise InvalidEvent(f"attribute {name!r}: a string, integer or boolean", name)
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            raise InvalidEvent(f"attribute {name!r}: an integer of 32 bits", name)
        if len(str(value)) > MAX_ATTRIBUTE_VALUE:
            raise InvalidEvent(f"attribute {name!r}: longer than {MAX_ATTRIBUTE_VALUE}", name)
