"""Sending what `groker publish` publishes, and printing the broker's answers: one message
(POST /messages), or a batch of stdin lines (POST /messages/batch)."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import click
import requests

from groker_cli.batches import Batch
from groker_cli.broker_api import (
    BrokerApi,
    BrokerError,
    NotPublishedInTime,
    Unreachable,
    json_of,
)
from groker_cli.console import echo_json, warn
from groker_cli.keys import raise_if_key_reused


def _reject_nan(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def _finite(number: str) -> float:
    # Python reads 1e999 as inf, which the broker refuses (and requests will not even
    # encode): like NaN, it is not a JSON number anyone can read.
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number} is too large for a double")
    return value


def parse_body(text: str) -> Any:
    """The text as JSON when it is valid JSON (`{"a": 1}`, `42`, `"quoted"`, `null`), else
    the text itself as a JSON string. NaN, Infinity and numbers too large for a double are
    not JSON: they stay text."""
    try:
        return json.loads(text, parse_constant=_reject_nan, parse_float=_finite)
    except ValueError:
        return text


class MessagePublisher:
    """Publishes bodies alike (one `groker publish`), printing each answer or raising the
    error that says what went wrong."""

    def __init__(
        self,
        api: BrokerApi,
        sync: bool,
        callback: str | None,
        headers: dict[str, str],
        read_timeout: float,
        retries: int,
    ) -> None:
        self._api = api
        # How every message is sent, for a batch and for one message.
        self._options: dict[str, Any] = {"mode": "sync" if sync else "async"}
        if callback:
            self._options["callback"] = callback
        self._headers = headers
        self._read_timeout = read_timeout
        self._retries = retries

    def message(self, text: str) -> dict[str, Any]:
        """One message, as a batch lists it (and POST /messages takes it, with options)."""
        if self._headers:
            return {"body": parse_body(text), "headers": self._headers}
        return {"body": parse_body(text)}

    def publish(self, text: str, key: str) -> None:
        """Publish one body with `key` as its Idempotency-Key (retries resend both)."""
        request = {**self._options, **self.message(text)}
        response = self._send("/messages", request, key)
        raise_if_key_reused(response, key)
        _raise_if_kept_unpublished(response)
        answer = self._api.answer(response)
        if response.headers.get("Idempotent-Replayed") == "true":
            message_id = answer.get("id") if isinstance(answer, dict) else None
            warn(
                f"replayed: the broker already had message {message_id} for "
                f"Idempotency-Key {key}; nothing new was queued"
            )
        echo_json(answer)

    def publish_batch(self, batch: Batch, key: str) -> None:
        """Publish a batch in one request with `key` as its Idempotency-Key, printing an
        answer per message as `publish` does; an error names the stdin line it is about."""
        request = {**self._options, "messages": batch.messages}
        try:
            response = self._send("/messages/batch", request, key)
        except Unreachable as exc:
            raise Unreachable(f"{batch.where()}: {exc.message}") from None
        try:
            raise_if_key_reused(response, key, "batch")
            answers = _batch_answers(response)
            _raise_if_batch_kept_unpublished(response, answers)
            self._api.answer(response)
        except click.ClickException as exc:
            raise type(exc)(f"{batch.where(json_of(response))}: {exc.message}") from None
        if response.headers.get("Idempotent-Replayed") == "true" and answers:
            warn(
                f"replayed: the broker already had {batch.where()} (seq "
                f"{answers[0].get('seq')}-{answers[-1].get('seq')}) for Idempotency-Key "
                f"{key}; nothing new was queued"
            )
        for answer in answers:
            echo_json(answer)

    def _send(self, path: str, request: dict[str, Any], key: str) -> requests.Response:
        return self._api.publish(
            path, request, key, self._read_timeout, self._retries, self._on_retry
        )

    def _on_retry(self, wait: float, attempt: int, reason: str) -> None:
        warn(
            f"{reason}; publishing again with the same Idempotency-Key in {wait:g} s "
            f"({attempt}/{self._retries})"
        )


def _raise_if_kept_unpublished(response: requests.Response) -> None:
    """Two answers that name an accepted message: print them like any other, so the id can
    be looked up later, and exit with the code that says what happened."""
    answer = json_of(response)
    if not (isinstance(answer, dict) and "id" in answer):
        return
    if response.status_code == 504:
        echo_json(answer)
        raise NotPublishedInTime(
            f"message {answer['id']} was not published within the broker's sync "
            "timeout; it stays queued and is published later"
        )
    if response.status_code == 503:
        echo_json(answer)
        raise BrokerError(
            f"the broker is stopping; message {answer['id']} stays queued and is "
            "published after its restart"
        )


def _batch_answers(response: requests.Response) -> list[dict[str, Any]]:
    """The messages a batch answer names (every one of the batch, in order), or none."""
    answer = json_of(response)
    messages = answer.get("messages") if isinstance(answer, dict) else None
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def _raise_if_batch_kept_unpublished(
    response: requests.Response, answers: list[dict[str, Any]]
) -> None:
    """`_raise_if_kept_unpublished` for a batch: the broker took every message of it."""
    if not answers or response.status_code not in (503, 504):
        return
    for answer in answers:
        echo_json(answer)
    waiting = sum(1 for a in answers if a.get("status") != "published")
    if response.status_code == 504:
        raise NotPublishedInTime(
            f"{waiting} of its {len(answers)} messages were not published within the "
            "broker's sync timeout; they stay queued and are published later"
        )
    raise BrokerError(
        f"the broker is stopping; {waiting} of its {len(answers)} messages stay queued "
        "and are published after its restart"
    )
