"""CloudEvents (spec 1.0, HTTP protocol binding): messages delivered as events to the
subscribers that asked for them (`format: cloudevents`), and events published to
POST /messages (`parse_event`).

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
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from broker.model import JsonText, Message, Subscriber, attribute_headers, encode_body

SPECVERSION = "1.0"
EVENT_TYPE = "groker.message"
DEFAULT_SOURCE = "/groker"
DATA_CONTENT_TYPE = "application/json"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# Binary mode header values: the spec asks for space, '"', '%' and anything outside
# printable ASCII to be percent-encoded (as UTF-8).
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


class InvalidEvent(ValueError):
    """A published CloudEvent groker cannot take (400)."""


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


# --- publishing: a CloudEvent sent to POST /messages ----------------------------------
REQUIRED = ("specversion", "id", "source", "type")
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_VALUE = 4096


def is_event(content_type: str | None, header_names: Iterable[str]) -> bool:
    """Whether a publish request is a CloudEvent: structured (its content type) or binary
    (any ce- header)."""
    if content_type and content_type.split(";")[0].strip().lower() == STRUCTURED:
        return True
    return any(name.lower().startswith("ce-") for name in header_names)


def parse_event(headers: Mapping[str, str], body: bytes) -> tuple[JsonText, dict[str, Any]]:
    """A published CloudEvent (binary or structured), read with the SDK: its data as the
    message body (JSON text) and its other attributes. Raises InvalidEvent."""
    lowered = {name.lower(): value for name, value in headers.items()}
    structured = not any(name.startswith("ce-") for name in lowered)
    raw = _raw_attributes(lowered, body, structured)
    # The SDK fills in a missing id, specversion or time: say what is missing instead.
    missing = [name for name in REQUIRED if name not in raw]
    if missing:
        raise InvalidEvent(f"missing required attribute(s): {', '.join(missing)}")
    try:
        event = http.from_http(http.HTTPMessage(lowered, body), JSONFormat(), CloudEvent)
    except (BaseCloudEventException, ValueError, TypeError, AttributeError) as exc:
        raise InvalidEvent(str(exc)) from None
    attributes = event.get_attributes()
    if "time" in raw:  # kept as sent, once the SDK has checked it
        attributes["time"] = raw["time"]
    else:  # the SDK's default: groker gives the time of publication instead
        attributes.pop("time", None)
    _check_attributes(attributes)
    if structured:
        if "data_base64" in raw:
            raise InvalidEvent("groker carries JSON data only, not data_base64")
        data = event.get_data()
    else:
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise InvalidEvent("the data (the request body) is not JSON") from None
    try:
        return encode_body(data), attributes
    except ValueError:
        raise InvalidEvent(
            "NaN, Infinity and numbers too large for a double are not JSON"
        ) from None


def _raw_attributes(headers: dict[str, str], body: bytes, structured: bool) -> dict[str, Any]:
    if not structured:
        return {name[3:]: value for name, value in headers.items() if name.startswith("ce-")}
    try:
        raw = json.loads(body)
    except ValueError:
        raise InvalidEvent("the event is not JSON") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("the event must be a JSON object")
    return raw


def _check_attributes(attributes: dict[str, Any]) -> None:
    """What the SDK lets through but groker cannot carry: non-JSON data, and attributes
    that do not fit a header (bounded like a message's headers)."""
    kind = attributes.get("datacontenttype")
    if kind is not None and not _is_json(kind):
        raise InvalidEvent(f"groker carries JSON data only, not {kind!r}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEvent(f"at most {MAX_ATTRIBUTES} attributes")
    for name, value in attributes.items():
        if not isinstance(value, str | int | bool):
            raise InvalidEvent(f"attribute {name!r}: a string, integer or boolean")
        if len(str(value)) > MAX_ATTRIBUTE_VALUE:
            raise InvalidEvent(f"attribute {name!r}: longer than {MAX_ATTRIBUTE_VALUE}")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
