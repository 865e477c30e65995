"""What the broker accepts over HTTP, validated in one step from the raw JSON bytes."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    WithJsonSchema,
    model_validator,
)

MAX_URL_LENGTH = 2048


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
    return url


# What the document says a callback looks like; the validator above is the authority.
CALLBACK_JSON_SCHEMA = {
    "type": "string",
    "format": "uri",
    "maxLength": MAX_URL_LENGTH,
    "pattern": r"^https?://[A-Za-z0-9._-]+(:[1-9][0-9]{0,4})?(/[A-Za-z0-9._~%/-]*)?$",
}
CallbackUrl = Annotated[
    StrictStr, AfterValidator(_absolute_http_url), WithJsonSchema(CALLBACK_JSON_SCHEMA)
]


class PublishRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        # A sync publisher hears the outcome in its answer: a callback is for async only.
        json_schema_extra={
            "if": {"properties": {"mode": {"const": "sync"}}, "required": ["mode"]},
            "then": {"properties": {"callback": {"type": "null"}}},
        },
    )

    body: Any = Field(description="any JSON value, delivered as is")
    mode: Literal["sync", "async"] = "async"
    callback: CallbackUrl | None = None
    headers: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _callback_is_for_async(self) -> PublishRequest:
        if self.mode == "sync" and self.callback is not None:
            raise ValueError("callback is for async messages only")
        return self


class SubscribeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    callback: CallbackUrl
