"""The broker's settings, read once from GROKER_* environment variables."""

from __future__ import annotations

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
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")
    notify_attempts: int = Field(3, ge=1, description="attempts at one publisher notification")
    notify_timeout: float = Field(5.0, gt=0, description="seconds per notification attempt")
    retention_count: int = Field(10_000, ge=0, description="published messages kept for GET")
    log_level: str = "INFO"

    @property
    def attempt_timeout(self) -> float:
        return self.delivery_timeout / self.delivery_attempts
