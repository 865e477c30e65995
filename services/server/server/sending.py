"""One message's way into the broker: its first attempt and every retry, all with the same
Idempotency-Key and body, so that however often an answer is lost on the way back the broker
takes the message once (it replays its first answer instead of queueing it again)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gevent
from geventhttpclient.response import HTTPParseError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_before_delay,
    wait_exponential_jitter,
)

from groker_common.http import HttpPool
from groker_common.retry_after import parse_retry_after
from server.settings import ServerSettings
from server.stats import PublishStats

log = logging.getLogger(__name__)

# The longest pause one Retry-After makes a message, or the publishing loop, take.
MAX_BACKOFF = 60.0

# Without a hint from the broker: a tenth of a second, doubling, at most 5 s, jittered so
# that the messages held up by an outage do not all come back in the same instant.
BACKOFF = wait_exponential_jitter(multiplier=0.1, max=5.0, jitter=0.1)

# No answer: refused, reset, timed out, or cut off mid-answer. The broker may or may not
# have taken the message; the key makes asking again safe either way.
TRANSPORT_ERRORS = (OSError, HTTPParseError)


@dataclass
class Outgoing:
    """Message n of this run, as sent on every attempt."""

    n: int
    mode: str
    key: str
    payload: dict[str, Any]
    sent_at: float
    message_id: str | None = None  # what the broker answered first
    duplicated: bool = False  # the broker answered another id too


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str]

    def __str__(self) -> str:
        return f"HTTP {self.status} {self.body}"

    @property
    def message_id(self) -> str | None:
        """The id of the message the broker holds for this request, if it says so."""
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("id"), str) and "seq" in body:
            return body["id"]
        return None

    @property
    def replayed(self) -> bool:
        return self.headers.get("idempotent-replayed", "").lower() == "true"

    @property
    def retry_after(self) -> float:
        """The broker's hint, 0 without one (the backoff applies alone then)."""
        return parse_retry_after(self.headers.get("retry-after"), default=0.0, maximum=MAX_BACKOFF)

    @property
    def worth_retrying(self) -> bool:
        """409: the first attempt is still being written; 429 and 5xx: busy, stopping, a
        sync publish not yet published (504, 503 with an id). With the key none of them can
        queue the message twice. Any other 4xx would be refused again."""
        return self.status in (409, 429) or self.status >= 500


def _last_answer(state: RetryCallState) -> Answer | None:
    """When the budget runs out: the last answer, None if the last attempt got none."""
    outcome = state.outcome
    return outcome.result() if outcome is not None and not outcome.failed else None


def _wait(state: RetryCallState) -> float:
    """The backoff, but never less than the broker's Retry-After."""
    answer = _last_answer(state)
    return max(BACKOFF(state), answer.retry_after if answer is not None else 0.0)


class Sender:
    """Publishes messages, each with its retries (callers run each in its own greenlet),
    and counts every attempt's outcome in the stats."""

    def __init__(self, settings: ServerSettings, stats: PublishStats, http: HttpPool) -> None:
        self._settings = settings
        self._stats = stats
        self._http = http
        self._url = f"{settings.broker_url.rstrip('/')}/messages"
        # time.monotonic() until which the broker asked for nothing new (queue full,
        # stopping): the publishing loop holds its next message until then.
        self.quiet_until = 0.0

    def publish(self, message: Outgoing) -> None:
        """Publish one message until it is accepted (and, sync, published), refused for
        good, or `retry_seconds` have passed."""
        retrying = Retrying(
            stop=stop_before_delay(self._settings.retry_seconds),
            wait=_wait,
            retry=retry_if_exception_type(TRANSPORT_ERRORS)
            | retry_if_result(lambda answer: answer.worth_retrying),
            before_sleep=lambda state: self._before_retry(message, state),
            retry_error_callback=_last_answer,
            sleep=gevent.sleep,  # tenacity's default, time.sleep, would block the hub
        )
        try:
            final = retrying(self._attempt, message)
        except Exception:  # a bug, not the broker: still count the message, and go on
            log.exception("publishing message %d failed", message.n)
            final = None
        self._conclude(message, final)

    def _before_retry(self, message: Outgoing, state: RetryCallState) -> None:
        self._stats.retries += 1
        # Said once per message: an outage would otherwise log every retry of every one.
        level = logging.INFO if state.attempt_number == 1 else logging.DEBUG
        if log.isEnabledFor(level):
            answer = _last_answer(state)
            why = repr(state.outcome.exception()) if answer is None and state.outcome else answer
            log.log(level, "message %d: %s; publishing again with its key", message.n, why)

    def _attempt(self, message: Outgoing) -> Answer:
        started = time.time()
        try:
            status, body, headers = self._http.exchange_json(
                "POST",
                self._url,
                message.payload,
                timeout=self._settings.sync_timeout + 5,
                token=self._settings.publish_token,
                extra_headers={"Idempotency-Key": message.key},
            )
        except TRANSPORT_ERRORS:
            self._stats.errors += 1
            raise
        finally:
            if message.mode == "sync":
                waited = time.time() - started
                self._stats.max_sync_wait = max(self._stats.max_sync_wait, waited)
        answer = Answer(status, body, headers)
        self._observe(message, answer)
        return answer

    def _observe(self, message: Outgoing, answer: Answer) -> None:
        stats = self._stats
        stats.replayed += answer.replayed
        message_id = answer.message_id
        if message_id is not None and answer.status in (200, 202, 503, 504):
            # Accepted. A sync publish answered 504 (timed out) or 503 (broker stopping)
            # is still queued: its retry waits on the same message again.
            if message.message_id is None:
                message.message_id = message_id
                stats.accepted_message(message_id, message.mode, message.sent_at)
            elif message_id != message.message_id and not message.duplicated:
                message.duplicated = True
                stats.duplicates += 1
                log.error("message %d was queued twice: %s", message.n, answer.body)
            if answer.status == 200:
                stats.confirm(message_id)
            stats.sync_timeouts += answer.status == 504
        elif answer.status in (429, 503):
            stats.rejected += 1
            self.quiet_until = max(self.quiet_until, time.monotonic() + answer.retry_after)
        elif answer.status != 409:
            stats.errors += 1
            log.warning(
                "publishing message %d answered %s: %s", message.n, answer.status, answer.body
            )

    def _conclude(self, message: Outgoing, final: Answer | None) -> None:
        if final is not None and final.status in (200, 202) and final.message_id is not None:
            return
        if message.message_id is not None:
            # Accepted, only not seen published before the budget ran out: still pending.
            log.warning("message %d: no outcome within the retry budget", message.n)
            return
        self._stats.lost += 1
        why = "no answer" if final is None else final
        log.error("message %d lost (never accepted): %s", message.n, why)
