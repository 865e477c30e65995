"""Reading a Retry-After header (RFC 9110, section 10.2.3): how long a busy broker asks a
publisher to wait before trying again. The load generator and the CLI both honour it, each
with its own ceiling and its own rules for which answers are worth retrying."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, default: float = 1.0, maximum: float = 60.0) -> float:
    """Seconds to wait, from delta-seconds (`3`, also `2.5`) or an HTTP-date, never below 0
    nor above `maximum`. `default` when there is no header, or one that is NaN or not
    readable: a hint gone wrong must neither stop the caller nor make it hammer."""
    seconds = default if value is None else _seconds(value, default)
    if math.isnan(seconds):
        seconds = default
    return min(max(seconds, 0.0), maximum)


def _seconds(value: str, default: float) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:  # the HTTP-date form
        return (parsedate_to_datetime(value) - datetime.now(tz=UTC)).total_seconds()
    except (TypeError, ValueError):  # not a date, or one without a time zone
        return default
