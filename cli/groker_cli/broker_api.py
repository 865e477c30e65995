"""Talking to the broker over its HTTP API: one `requests` session, and every way a call can
go wrong turned into a one-line error with the exit code scripts rely on."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import click
import requests

from groker_cli.retrying import backoff, retry_wait

# The exit codes, documented in `groker --help`. 2 is click's own, for usage errors.
EXIT_BROKER_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UNAUTHORIZED = 4
EXIT_NOT_PUBLISHED_IN_TIME = 5


class BrokerError(click.ClickException):
    """The broker answered with an error (4xx/5xx); its JSON error is in the message."""

    exit_code = EXIT_BROKER_ERROR


class Unreachable(click.ClickException):
    """No answer: refused, timed out, unresolvable, or the connection broke."""

    exit_code = EXIT_UNREACHABLE


class Unauthorized(click.ClickException):
    """401 (or a 403 other than a refused callback): the token is wrong, lacks the scope,
    or none was given."""

    exit_code = EXIT_UNAUTHORIZED


class NotPublishedInTime(click.ClickException):
    """504 to a sync publish: accepted and still queued, but not published in time."""

    exit_code = EXIT_NOT_PUBLISHED_IN_TIME


def _reason(exc: requests.RequestException) -> str:
    """The useful part of a requests/urllib3 error ("Connection refused"), not the nest of
    wrapper reprs around it."""
    text = str(exc)
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if errno_text:
        return errno_text.group(1).strip().rstrip(".").lower()
    return f"{type(exc).__name__}: {text[:200]}"


class BrokerApi:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "groker-cli"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._session.close()

    def request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        read_timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """One HTTP call; a transport failure becomes `Unreachable`, an answer is returned
        whatever its status."""
        read_timeout = self.timeout if read_timeout is None else read_timeout
        try:
            return self._session.request(
                method,
                self.url + path,
                json=payload,
                headers=headers,
                timeout=(self.timeout, read_timeout),
                allow_redirects=False,
            )
        except requests.ConnectTimeout:
            reason = f"no connection within {self.timeout:g} s"
        except requests.Timeout:
            reason = f"no answer within {read_timeout:g} s"
        except requests.RequestException as exc:
            reason = _reason(exc)
        raise Unreachable(f"cannot reach the broker at {self.url}: {reason}")

    def answer(self, response: requests.Response) -> Any:
        """The JSON of a 2xx answer; any other answer raises the matching error."""
        if response.status_code == 401 or (
            response.status_code == 403 and not _is_refused_callback(response)
        ):
            raise Unauthorized(
                "the broker refused the token (or none was given): "
                f"HTTP {response.status_code} {describe(response)}"
            )
        if response.status_code >= 300:
            raise BrokerError(
                f"the broker answered HTTP {response.status_code}: {describe(response)}"
            )
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise BrokerError(
                f"the broker answered HTTP {response.status_code} with something that is not "
                f"JSON: {response.text[:200]!r}"
            ) from None

    def call(self, method: str, path: str, payload: Any = None) -> Any:
        return self.answer(self.request(method, path, payload))

    def publish(
        self,
        path: str,
        request: dict[str, Any],
        key: str,
        read_timeout: float,
        retries: int,
        on_retry: Callable[[float, int, str], None],
    ) -> requests.Response:
        """POST `request` to `path` (/messages or /messages/batch) with `key` as its
        Idempotency-Key; again, with the same key and body, after no answer or an answer
        worth retrying (`retrying.retry_wait`), at most `retries` times. Returns the last
        answer (the caller judges it); raises `Unreachable` if the last attempt got none."""
        sync = request.get("mode") == "sync"
        headers = {"Idempotency-Key": key}
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.request("POST", path, request, read_timeout, headers)
            except Unreachable as exc:
                # The broker may have taken the message(s) before the connection broke:
                # the key makes sending it again safe.
                if attempt > retries:
                    raise
                wait, reason = backoff(attempt), exc.message
            else:
                answer_wait = retry_wait(response, sync, attempt)
                if answer_wait is None or attempt > retries:
                    return response
                wait = answer_wait
                reason = f"the broker answered HTTP {response.status_code} {describe(response)}"
            on_retry(wait, attempt, reason)
            time.sleep(wait)


def _is_refused_callback(response: requests.Response) -> bool:
    """The broker's one 403 that is not about the token: a callback URL pointing where it
    will not send webhooks."""
    answer = json_of(response)
    return isinstance(answer, dict) and answer.get("error") == "callback not allowed"


def json_of(response: requests.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def describe(response: requests.Response) -> str:
    """The broker's JSON error on one line, or the start of whatever else it sent."""
    answer = json_of(response)
    if answer is None:
        return repr(response.text[:200])
    return json.dumps(answer, ensure_ascii=False)
