"""The load generator's settings, read once from GROKER_* environment variables."""

from __future__ import annotations

from pydantic import Field

from groker_common.settings import GrokerSettings


class ServerSettings(GrokerSettings):
    broker_url: str = "http://broker:8000"
    rate: float = Field(1.0, ge=0, description="messages per second; 0 publishes nothing")
    sync_ratio: float = Field(0.5, ge=0, le=1, description="share of messages sent sync")
    callback_url: str = Field(
        "http://server:8001/notifications",
        description="where the broker reaches this server's notification webhook",
    )
    sync_timeout: float = Field(30.0, gt=0, description="the broker's sync timeout")
    retry_seconds: float = Field(
        300.0,
        gt=0,
        description="how long one message is retried (same Idempotency-Key and body) before "
        "it counts as lost",
    )
    max_in_flight: int = Field(
        1000,
        ge=1,
        description="messages being published or retried at once; at this many the "
        "publishing loop waits for one to finish",
    )
    publish_token: str | None = Field(None, description="bearer token sent when publishing")
    callback_secret: str | None = Field(
        None, description="the broker's GROKER_CALLBACK_SECRET: notifications must carry it"
    )
    log_level: str = "INFO"
