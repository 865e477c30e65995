"""Webhook signatures per the Standard Webhooks spec, with the `standardwebhooks` library:
the broker signs every POST it makes; the client, the server and the CLI verify what they
receive."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["WebhookVerificationError", "check_secret", "new_secret", "sign", "verify"]


def new_secret() -> str:
    """A fresh secret in the spec's `whsec_<base64>` form."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@lru_cache(maxsize=4096)
def _webhook(secret: str) -> Webhook:
    # Decoding the secret is a good part of signing: do it once per secret.
    return Webhook(secret)


def check_secret(secret: str) -> None:
    """Raise ValueError unless `secret` is a usable `whsec_<base64>` key: a receiver told
    a secret it cannot use should say so at once, not refuse every delivery later."""
    try:
        _webhook(secret)
    except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, ...
        raise ValueError(f"unusable webhook secret: {exc}") from exc


def sign(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """The three headers that let the receiver check who sent `body`, and when."""
    now = datetime.now(tz=UTC)
    signature = _webhook(secret).sign(message_id, now, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def verify(secret: str, body: bytes, headers: Any) -> None:
    """Raise WebhookVerificationError unless the headers sign `body` with `secret` within
    the spec's 5-minute window (a replayed or stale webhook fails too)."""
    try:
        _webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()}, json_parse=False)
    except ValueError as exc:
        # A signature header too malformed for the library to split: a bad signature too.
        raise WebhookVerificationError(f"malformed signature header: {exc}") from exc
