"""The subscriber's settings, read once from GROKER_* environment variables."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import AliasChoices, Field

from groker_common.settings import GrokerSettings

# What the broker sends this subscriber: its envelope, or CloudEvents (in a content mode).
Format = Literal["groker", "cloudevents"]
CloudEventsMode = Literal["binary", "structured"]


class ClientSettings(GrokerSettings):
    broker_url: str = "http://broker:8000"
    port: int = Field(8002, validation_alias=AliasChoices("PORT", "GROKER_CLIENT_PORT"))
    callback_url: str | None = Field(
        None,
        description="the URL the broker calls; default: this replica's own IP address and port",
    )
    resubscribe_interval: float = Field(
        5.0, gt=0, description="seconds between checks that the broker still knows us"
    )
    keep_recent: int = Field(1000, ge=1, description="received messages kept for GET /messages")
    manage_token: str | None = Field(None, description="bearer token sent when subscribing")
    max_batch: int = Field(
        1, ge=1, le=1000, description="messages per delivery at most (above 1: batches)"
    )
    format: Format = Field(
        "groker", description="what the broker sends: its envelope, or CloudEvents"
    )
    cloudevents_mode: CloudEventsMode = Field(
        "binary", description="how CloudEvents come over HTTP (batches: always structured)"
    )
    verify_signatures: bool = Field(
        True, description="refuse (401) deliveries not signed with our subscription's secret"
    )
    fault_injection: bool = Field(
        False, description="serve PUT /fault, to make this replica fail on purpose (tests, demos)"
    )
    log_level: str = "INFO"

    def own_callback_url(self) -> str:
        """Each replica must be reachable at its own address, not a shared service name,
        so by default it advertises the IP its hostname resolves to (the container's)."""
        if self.callback_url:
            return self.callback_url
        ip = socket.gethostbyname(socket.gethostname())
        return f"http://{ip}:{self.port}/messages"
