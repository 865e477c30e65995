"""The broker's settings, read once from GROKER_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BrokerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GROKER_", frozen=True)

    sync_timeout: float = Field(30.0, gt=0, description="seconds a sync publish waits")
    delivery_timeout: float = Field(
        5.0, gt=0, description="seconds all attempts at one delivery may take together"
    )
    delivery_attempts: int = Field(3, ge=1, description="attempts before a subscriber is removed")
    lane_capacity: int = Field(1000, ge=1, description="messages waiting per subscriber lane")
    max_queue_length: int = Field(10_000, ge=1, description="unpublished messages kept at most")
    max_queue_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="unpublished message bodies kept at most, bytes"
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")
    notify_attempts: int = Field(3, ge=1, description="attempts at one publisher notification")
    notify_timeout: float = Field(5.0, gt=0, description="seconds per notification attempt")
    retention_count: int = Field(10_000, ge=0, description="published messages kept for GET")
    retention_seconds: float = Field(
        3600.0, ge=0, description="seconds published messages are kept for GET"
    )
    store: Literal["sqlite", "memory"] = Field(
        "sqlite", description="sqlite: durable (the default); memory: lost on restart"
    )
    db_path: str = Field("groker.db", description="the SQLite file (on a volume in compose)")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL only a process crash"
    )
    drain_timeout: float = Field(
        20.0, ge=0, description="seconds to finish deliveries under way when stopping"
    )
    log_level: str = "INFO"

    @property
    def attempt_timeout(self) -> float:
        return self.delivery_timeout / self.delivery_attempts
