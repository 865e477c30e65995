"""The broker's settings, read once from GROKER_* environment variables."""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from groker_common.settings import GrokerSettings

# A comma-separated list in the environment (or in a secrets file).
CommaList = Annotated[list[str], NoDecode]


class BrokerSettings(GrokerSettings):
    sync_timeout: float = Field(30.0, gt=0, description="seconds a sync publish waits")
    delivery_timeout: float = Field(
        5.0, gt=0, description="seconds all attempts at one delivery may take together"
    )
    delivery_attempts: int = Field(3, ge=1, description="attempts before a subscriber is removed")
    lane_capacity: int = Field(1000, ge=1, description="messages waiting per subscriber lane")
    max_queue_length: int = Field(10_000, ge=1, description="unpublished messages kept at most")
    max_queue_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="unpublished messages kept at most (body, headers, callback), bytes",
    )
    flow_backlog: int = Field(
        1000, ge=1, description="queued messages beyond which publishers are held (flow control)"
    )
    flow_wait: float = Field(
        1.0, ge=0, description="seconds a publisher is held at most by flow control"
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body")
    max_batch: int = Field(1000, ge=1, description="messages in one POST /messages/batch at most")
    notify_attempts: int = Field(3, ge=1, description="attempts at one publisher notification")
    notify_timeout: float = Field(5.0, gt=0, description="seconds per notification attempt")
    retention_count: int = Field(10_000, ge=0, description="published messages kept for GET")
    retention_seconds: float = Field(
        3600.0, ge=0, description="seconds published messages are kept for GET"
    )
    idempotency_seconds: float = Field(
        86_400.0,
        gt=0,
        description="seconds an Idempotency-Key is answered (at most while its message is"
        " retained for GET)",
    )
    # Checked against storage/backends.py, the one place that knows the backends.
    store: str = Field(
        "sqlite",
        description="sqlite: durable (the default); memory: lost on restart; valkey: durable,"
        " in Valkey",
    )
    lease_seconds: float = Field(
        5.0,
        ge=1,
        description="with the valkey store: the ownership lease; a standby replica takes over"
        " within it when the owner dies",
    )
    db_path: str = Field("groker.db", description="the SQLite file (on a volume in compose)")
    replica_name: str = Field(
        default_factory=socket.gethostname,
        description="this replica's name (X-Groker-Replica, /stats, the replicas' roster); by"
        " default the hostname, which replicas on one host do not tell apart",
    )
    advertise_url: str | None = Field(
        None,
        description="with the valkey store: where the other replicas reach this one (a"
        " standby relays all but publishes to the owner); by default http://<this host's"
        " address>:<PORT>",
    )
    valkey_url: str = Field(
        "redis://valkey:6379/0", description="the Valkey server (with GROKER_STORE=valkey)"
    )
    valkey_prefix: str = Field(
        "groker", description="hash tag of every Valkey key the broker keeps: {prefix}:..."
    )
    valkey_sentinels: CommaList = Field(
        default_factory=list,
        description="host:port of Valkey Sentinels; set, the broker writes to the primary they"
        " name for GROKER_VALKEY_SERVICE, found again after a failover (GROKER_VALKEY_URL then"
        " gives only the password and database)",
    )
    valkey_service: str = Field(
        "groker", min_length=1, description="the Sentinels' name for the Valkey primary"
    )
    valkey_wait_replicas: int = Field(
        0,
        ge=0,
        description="N > 0: a write is answered only once it is in the append-only file of"
        " the primary and of N replicas (WAITAOF 1 N), so a failover cannot lose it",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL only a process crash"
    )
    cloudevents_source: str = Field(
        "/groker",
        min_length=1,
        description="the `source` of the CloudEvents delivered to subscribers that take them",
    )
    drain_timeout: float = Field(
        20.0, ge=0, description="seconds to finish deliveries under way when stopping"
    )
    # --- who may talk to the broker, and where it may send webhooks -------------------
    publish_tokens: CommaList = Field(
        default_factory=list, description="bearer tokens for publishing; none: open"
    )
    manage_tokens: CommaList = Field(
        default_factory=list, description="bearer tokens for managing subscriptions; none: open"
    )
    callback_secret: str | None = Field(
        None, description="Standard Webhooks secret (whsec_...) signing publisher callbacks"
    )
    allowed_networks: CommaList = Field(
        default_factory=list,
        description="CIDRs callbacks may point into besides public addresses (loopback too)",
    )
    verify_subscriptions: bool = Field(
        True, description="a new callback must echo a challenge before it is subscribed"
    )
    rate_limit: str | None = Field(
        None, description="per token (or client address), e.g. '200/second'; none: unlimited"
    )
    max_header_count: int = Field(50, ge=10, description="request headers at most (then 431)")
    max_header_bytes: int = Field(16_384, ge=1024, description="request headers' total size")
    log_level: str = "INFO"

    @field_validator(
        "publish_tokens", "manage_tokens", "allowed_networks", "valkey_sentinels", mode="before"
    )
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]
        return value

    @property
    def attempt_timeout(self) -> float:
        return self.delivery_timeout / self.delivery_attempts
