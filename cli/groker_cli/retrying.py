"""When `groker publish` sends a message again, and how long it waits first. Every attempt
carries the message's Idempotency-Key and the same body, so asking again never queues it
twice: the broker answers a repeat with the first message (`Idempotent-Replayed: true`)."""

from __future__ import annotations

import requests

from groker_common.retry_after import parse_retry_after

# The first retry waits this long, each next one twice as long, none longer than
# MAX_RETRY_WAIT; a broker's Retry-After is honoured, within that ceiling.
FIRST_RETRY_WAIT = 0.5
MAX_RETRY_WAIT = 30.0


def backoff(attempt: int) -> float:
    """The pause before retry number `attempt` (1, 2, ...) when the broker gave no hint."""
    return min(FIRST_RETRY_WAIT * 2 ** (attempt - 1), MAX_RETRY_WAIT)


def retry_wait(response: requests.Response, sync: bool, attempt: int) -> float | None:
    """Seconds to wait before publishing again, or None when this answer is final.

    Retried: 503 (queue full, store unavailable, or stopping: a sync publish cut short names
    its message, and the retry waits on that one again), 429 (rate limited), 409 (the first
    request with this key is still being written) and, for a sync publish, 504 (not yet
    published: the broker has just waited, so the retry goes at once and waits again).
    Every other answer, 422 (this key was used for another request) included, is final."""
    if response.status_code == 504 and sync:
        return 0.0
    if response.status_code not in (409, 429, 503):
        return None
    hint = response.headers.get("Retry-After")
    return max(backoff(attempt), parse_retry_after(hint, default=0.0, maximum=MAX_RETRY_WAIT))
