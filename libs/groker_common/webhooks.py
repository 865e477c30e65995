"""The receiving side of the broker's subscription handshake."""

from __future__ import annotations

import json


def verification_answer(raw: bytes) -> bytes | None:
    """What a willing subscriber answers to the broker's subscription challenge, or None
    when `raw` is not one."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("type") == "subscription.verify":
        return json.dumps({"challenge": data.get("challenge")}).encode()
    return None
