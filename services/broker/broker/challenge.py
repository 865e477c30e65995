"""The subscription challenge (WebSub's intent verification, hub.challenge, in JSON):
before a callback is subscribed, it must prove it wants to be, by echoing a random
challenge. Without it, anyone could point the broker's deliveries at a victim."""

from __future__ import annotations

import json
import secrets

from broker.errors import ChallengeFailed
from groker_common.http import JSON_HEADERS, HttpPool


def challenge_callback(http: HttpPool, callback: str, timeout: float) -> None:
    """POST {"type": "subscription.verify", "challenge": c}; the callback must answer 200
    with {"challenge": c}."""
    challenge = secrets.token_urlsafe(24)
    body = json.dumps({"type": "subscription.verify", "challenge": challenge}).encode()
    try:
        status, raw = http.request("POST", callback, body, JSON_HEADERS, timeout)
    except Exception as exc:
        raise ChallengeFailed(f"callback not reachable: {type(exc).__name__}: {exc}") from exc
    if status != 200:
        raise ChallengeFailed(f"callback answered HTTP {status} to the challenge")
    try:
        echoed = json.loads(raw).get("challenge")
    except (ValueError, AttributeError):
        echoed = None
    if echoed != challenge:
        raise ChallengeFailed("callback did not echo the challenge")
