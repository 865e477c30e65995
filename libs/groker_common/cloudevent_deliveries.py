"""The broker's deliveries to a subscription with `format: cloudevents`, read with the
CloudEvents SDK as any CloudEvents subscriber reads them: binary (ce- headers, the data as
the body), structured (application/cloudevents+json) or, to a batch subscriber, a JSON
array of structured events (application/cloudevents-batch+json).

Each event becomes the delivery `webhooks.WebhookReceiver` takes, shaped like groker's own
envelope where it can be: `id` (the event's), `seq` (groker's extension), `body` (the
data), and `cloudevent`, every attribute of the event.

Only webhooks.py imports this, and only when a CloudEvent arrives: the SDK is a dependency
of the example client, not of the `groker` CLI, which packages groker_common too."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent


class InvalidDelivery(Exception):
    """A POST that is no CloudEvents delivery of groker's (the receiver answers 400)."""


def read_events(raw: bytes, headers: Mapping[str, str], batch: bool) -> list[dict[str, Any]]:
    """The deliveries in one POST: one event (binary or structured, as its headers say), or
    every event of a batch, in order."""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        if not batch:
            event = http.from_http(http.HTTPMessage(lowered, raw), JSONFormat(), CloudEvent)
            return [_delivery(event)]
        events = json.loads(raw)
        if not isinstance(events, list) or not events:
            raise InvalidDelivery("a batch is a non-empty JSON array of events")
        # The SDK reads events from their JSON text only.
        return [_delivery(JSONFormat().read(CloudEvent, json.dumps(e))) for e in events]
    except InvalidDelivery:
        raise
    except (BaseCloudEventException, ValueError, TypeError, AttributeError) as exc:
        raise InvalidDelivery(f"not a CloudEvent: {exc}") from None


def _delivery(event: BaseCloudEvent) -> dict[str, Any]:
    attributes = {name: _json(value) for name, value in event.get_attributes().items()}
    seq = attributes.get("seq")
    # Binary mode carries every attribute as a string.
    if isinstance(seq, str) and seq.isascii() and seq.isdigit():
        seq = attributes["seq"] = int(seq)
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise InvalidDelivery("an event without groker's integer extension seq")
    data = event.get_data()
    if isinstance(data, bytes):
        raise InvalidDelivery("groker delivers JSON data, not binary")
    return {"id": event.get_id(), "seq": seq, "body": data, "cloudevent": attributes}


def _json(value: Any) -> Any:
    """An attribute as JSON has it (time as the RFC 3339 text the event carried)."""
    if not isinstance(value, datetime):
        return value
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
