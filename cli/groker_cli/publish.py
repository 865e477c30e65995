"""`groker publish`: one message from the command line, or one per line of stdin."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import click

from groker_cli.batches import MAX_BATCH_BYTES, group
from groker_cli.broker_api import BrokerApi
from groker_cli.keys import BATCH_SUFFIX_ROOM, LINE_SUFFIX_ROOM, MAX_KEY_LENGTH, check_key, new_key
from groker_cli.options import seconds_option
from groker_cli.publishers import MessagePublisher
from groker_cli.retrying import FIRST_RETRY_WAIT, MAX_RETRY_WAIT

# `publish -` shows a progress bar from this many lines on.
PROGRESS_MIN_LINES = 50


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


def _stdin_lines() -> tuple[list[tuple[int, str]] | Iterator[tuple[int, str]], bool]:
    """The non-blank lines of stdin with their line numbers, and whether a terminal types
    them. Piped input is read whole first (a list), so the progress bar knows its length;
    typed input is published line by line as it comes (an iterator)."""
    stream = click.get_text_stream("stdin")
    interactive = stream.isatty()
    numbered: Iterator[tuple[int, str]] = (
        (n, line.rstrip("\r\n")) for n, line in enumerate(stream, start=1)
    )
    non_blank = ((n, line) for n, line in numbered if line.strip())
    return (non_blank, True) if interactive else (list(non_blank), False)


def _publish_stdin(publisher: MessagePublisher, key: str | None, batch: int) -> None:
    """Each non-blank line of stdin as one message, in order, `batch` lines a request; the
    first failure stops it, its error naming the line."""
    lines, interactive = _stdin_lines()
    total = len(lines) if isinstance(lines, list) else 0
    stderr = click.get_text_stream("stderr")
    show_bar = (
        total >= PROGRESS_MIN_LINES
        and stderr.isatty()
        # Answers on a terminal are progress enough, and would be torn by the bar.
        and not click.get_text_stream("stdout").isatty()
    )
    with click.progressbar(
        length=total, label="publishing", show_pos=True, file=stderr, hidden=not show_bar
    ) as bar:
        # Typed lines are published as they come, not once a batch of them is typed.
        for published in _publish_lines(publisher, lines, key, 1 if interactive else batch):
            bar.update(published)


def _publish_lines(
    publisher: MessagePublisher, lines: Iterable[tuple[int, str]], key: str | None, batch: int
) -> Iterator[int]:
    """Publish the numbered lines, yielding how many each request published. Keys derive
    from `key` and line numbers (blank lines counted), so that publishing the same input
    again with the same key and --batch publishes only what was not yet: `key-<line>` for
    a line alone (POST /messages, as before batches), `key-<first>-<last>` for a batch. A
    fresh key per request without `key`."""
    if batch == 1:
        for line_number, text in lines:
            try:
                publisher.publish(text, f"{key}-{line_number}" if key else new_key())
            except click.ClickException as exc:
                raise type(exc)(f"stdin line {line_number}: {exc.message}") from None
            yield 1
        return
    messages = ((n, publisher.message(text)) for n, text in lines)
    for lines_batch in group(messages, batch):
        publisher.publish_batch(lines_batch, lines_batch.key(key))
        yield len(lines_batch.messages)


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
    help="The message's Idempotency-Key (by default a fresh UUID per message, or per batch): "
    "publishing again with the same KEY and the same message creates nothing new, and prints "
    "the first answer; with another message it fails (exit 1). With `-`, each batch of lines "
    "FIRST to LAST is sent with KEY-FIRST-LAST (with --batch 1, line N with KEY-N), so a "
    "rerun of the same input with the same --batch publishes only the lines that were not "
    "yet.",
)
@click.option(
    "--batch",
    metavar="N",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="With `-`: publish N consecutive lines in one request (POST /messages/batch, at most "
    "the broker's GROKER_MAX_BATCH), fewer where N would pass "
    f"{MAX_BATCH_BYTES // 1000} KB of JSON; 1 sends each line alone (POST /messages). "
    "Lines typed on a terminal go one by one.",
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
    batch: int,
    retries: int,
) -> None:
    """Publish BODY as one message, or with `-` each line of stdin as one message.

    BODY is sent as JSON when it parses as JSON (`'{"n": 1}'`, `42`, `true`), otherwise as
    a JSON string. Blank stdin lines are skipped. Prints the broker's answer as one JSON
    line per message: `{"id", "seq", "status": "queued"}`, or with --sync the outcome
    `{"id", "seq", "status": "published", "delivered", "failed", "published_at"}`.

    With `-`, lines are sent --batch at a time; the answers are the same, one line per
    message in input order, and the first refused line stops it, its error naming the line.

    Every message (or batch) carries an Idempotency-Key, kept on every retry, so that a
    message the broker took before its answer was lost is not queued again: the broker
    replays its first answer instead, printed as usual, with a note on stderr.

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
    room, suffix = (
        (LINE_SUFFIX_ROOM, "-<line number>")
        if batch == 1
        else (BATCH_SUFFIX_ROOM, "-<first line>-<last line>")
    )
    if body == "-" and key is not None and len(key) > MAX_KEY_LENGTH - room:
        raise click.BadParameter(
            f"with `-` at most {MAX_KEY_LENGTH - room} characters, leaving room for {suffix}",
            param_hint="'--idempotency-key'",
        )
    read_timeout = api.timeout + sync_timeout if sync else api.timeout
    publisher = MessagePublisher(api, sync, callback, headers, read_timeout, retries)
    if body == "-":
        _publish_stdin(publisher, key, batch)
    else:
        publisher.publish(body, key or new_key())
