"""`groker publish`: one message from the command line, or one per line of stdin."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
import requests

from groker_cli.broker_api import (
    BrokerApi,
    BrokerError,
    NotPublishedInTime,
    json_of,
)
from groker_cli.console import echo_json, warn
from groker_cli.keys import (
    LINE_SUFFIX_ROOM,
    MAX_KEY_LENGTH,
    check_key,
    new_key,
    raise_if_key_reused,
)
from groker_cli.options import seconds_option
from groker_cli.retrying import FIRST_RETRY_WAIT, MAX_RETRY_WAIT

# `publish -` shows a progress bar from this many lines on.
PROGRESS_MIN_LINES = 50


def _reject_nan(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not JSON")


def parse_body(text: str) -> Any:
    """The text as JSON when it is valid JSON (`{"a": 1}`, `42`, `"quoted"`, `null`), else
    the text itself as a JSON string. NaN and Infinity are not JSON: they stay text."""
    try:
        return json.loads(text, parse_constant=_reject_nan)
    except ValueError:
        return text


def _parse_headers(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    headers = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE")
        headers[name.strip()] = value
    return headers


def request_template(sync: bool, callback: str | None, headers: dict[str, str]) -> dict[str, Any]:
    """What every message of one `groker publish` is sent with, but its body."""
    template: dict[str, Any] = {"mode": "sync" if sync else "async"}
    if callback:
        template["callback"] = callback
    if headers:
        template["headers"] = headers
    return template


class MessagePublisher:
    """Publishes bodies alike (one `groker publish`), printing each answer or raising the
    error that says what went wrong."""

    def __init__(
        self, api: BrokerApi, template: dict[str, Any], read_timeout: float, retries: int
    ) -> None:
        self._api = api
        self._template = template
        self._read_timeout = read_timeout
        self._retries = retries

    def publish(self, text: str, key: str) -> None:
        """Publish one body with `key` as its Idempotency-Key (retries resend both)."""
        request = {**self._template, "body": parse_body(text)}
        response = self._api.publish(
            request, key, self._read_timeout, self._retries, self._on_retry
        )
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


def _stdin_lines() -> list[tuple[int, str]] | Iterator[tuple[int, str]]:
    """The non-blank lines of stdin with their line numbers. Piped input is read whole
    first (a list), so the progress bar knows its length; typed input is published line by
    line as it comes (an iterator)."""
    stream = click.get_text_stream("stdin")
    interactive = stream.isatty()
    numbered: Iterator[tuple[int, str]] = (
        (n, line.rstrip("\r\n")) for n, line in enumerate(stream, start=1)
    )
    non_blank = ((n, line) for n, line in numbered if line.strip())
    return non_blank if interactive else list(non_blank)


def _publish_stdin(publish_one: Callable[[str, str], None], key: str | None) -> None:
    """Each non-blank line of stdin as one message, in order; the first failure stops it,
    its error naming the line. Each line's Idempotency-Key is `key-<line number>`, so that
    publishing the same input again with the same key publishes only what was not yet
    (line numbers count blank lines too), or a fresh one per line without `key`."""
    lines = _stdin_lines()
    stderr = click.get_text_stream("stderr")
    show_bar = (
        isinstance(lines, list)
        and len(lines) >= PROGRESS_MIN_LINES
        and stderr.isatty()
        # Answers on a terminal are progress enough, and would be torn by the bar.
        and not click.get_text_stream("stdout").isatty()
    )
    with click.progressbar(
        lines,
        label="publishing",
        show_pos=True,
        file=stderr,
        hidden=not show_bar,
    ) as numbered_lines:
        for line_number, text in numbered_lines:
            try:
                publish_one(text, f"{key}-{line_number}" if key else new_key())
            except click.ClickException as exc:
                raise type(exc)(f"stdin line {line_number}: {exc.message}") from None


@click.command(short_help="Publish a message, or one per line of stdin.")
@click.argument("body", metavar="BODY|-")
@click.option(
    "--sync",
    is_flag=True,
    help="Wait until the message is published (delivered to every subscriber) and print the "
    "outcome; exit 5 if the broker's sync timeout passes first.",
)
@click.option(
    "--callback",
    metavar="URL",
    help="Have the broker POST the outcome to URL once the message is published (async only).",
)
@click.option(
    "--header",
    "headers",
    metavar="NAME=VALUE",
    multiple=True,
    callback=_parse_headers,
    help="A header delivered with the message to every subscriber; repeatable.",
)
@seconds_option(
    "--sync-timeout",
    30.0,
    "The broker's sync timeout: how long it holds a --sync publish before answering 504.",
    envvar="GROKER_SYNC_TIMEOUT",
    show_envvar=True,
)
@click.option(
    "--idempotency-key",
    "key",
    metavar="KEY",
    callback=check_key,
    help="The message's Idempotency-Key (by default a fresh UUID per message): publishing "
    "again with the same KEY and the same message creates nothing new, and prints the first "
    "answer; with another message it fails (exit 1). With `-`, line N is sent with KEY-N, "
    "so a rerun of the same input publishes only the lines that were not yet.",
)
@click.option(
    "--retries",
    metavar="N",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="How often to publish again, with the same Idempotency-Key and body, when the "
    "broker cannot be reached or answers 503, 429, 409 or, with --sync, 504 (the retry "
    f"waits on the same message again); waiting {FIRST_RETRY_WAIT:g} s, doubling, never "
    f"less than the broker's Retry-After, {MAX_RETRY_WAIT:g} s at most.",
)
@click.pass_obj
def publish(
    api: BrokerApi,
    body: str,
    sync: bool,
    callback: str | None,
    headers: dict[str, str],
    sync_timeout: float,
    key: str | None,
    retries: int,
) -> None:
    """Publish BODY as one message, or with `-` each line of stdin as one message.

    BODY is sent as JSON when it parses as JSON (`'{"n": 1}'`, `42`, `true`), otherwise as
    a JSON string. Blank stdin lines are skipped. Prints the broker's answer as one JSON
    line per message: `{"id", "seq", "status": "queued"}`, or with --sync the outcome
    `{"id", "seq", "status": "published", "delivered", "failed", "published_at"}`.

    Every message carries an Idempotency-Key, kept on every retry, so that a message the
    broker took before its answer was lost is not queued again: the broker replays its
    first answer instead, printed as usual, with a note on stderr.

    \b
    Examples:
      groker publish '{"order": 17, "total": 9.5}'
      groker publish --sync 'hello'
      groker publish --idempotency-key order-17 '{"order": 17}'   # twice: one message
      seq 1 1000 | groker publish -
      groker publish --idempotency-key import-7 - < orders.jsonl   # rerun after a failure
    """
    if sync and callback:
        raise click.UsageError("--callback is for async messages; --sync waits instead")
    if body == "-" and key is not None and len(key) > MAX_KEY_LENGTH - LINE_SUFFIX_ROOM:
        raise click.BadParameter(
            f"with `-` at most {MAX_KEY_LENGTH - LINE_SUFFIX_ROOM} characters, "
            "leaving room for -<line number>",
            param_hint="'--idempotency-key'",
        )
    read_timeout = api.timeout + sync_timeout if sync else api.timeout
    template = request_template(sync, callback, headers)
    publisher = MessagePublisher(api, template, read_timeout, retries)
    if body == "-":
        _publish_stdin(publisher.publish, key)
    else:
        publisher.publish(body, key or new_key())
