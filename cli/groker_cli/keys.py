"""Idempotency keys for `groker publish`: every message is sent with one, so that however
often it is sent again (a retry after no answer, or a rerun of the same command with
--idempotency-key) the broker queues it once."""

from __future__ import annotations

import re
import uuid

import click
import requests

from groker_cli.broker_api import BrokerError, describe, json_of

# What the broker takes as an Idempotency-Key: 1 to 255 printable ASCII characters. Not
# starting or ending with a space, which HTTP would strip on the way.
MAX_KEY_LENGTH = 255
KEY_PATTERN = re.compile(r"[!-~]([ -~]*[!-~])?")
# Room kept for `-<line number>` when `-` derives a key per line from --idempotency-key,
# and for `-<first line>-<last line>` when it derives one per batch of lines.
LINE_SUFFIX_ROOM = 12
BATCH_SUFFIX_ROOM = 2 * LINE_SUFFIX_ROOM


def check_key(_ctx: click.Context, _param: click.Parameter, key: str | None) -> str | None:
    if key is not None and not (len(key) <= MAX_KEY_LENGTH and KEY_PATTERN.fullmatch(key)):
        raise click.BadParameter(
            f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, "
            "not starting or ending with a space"
        )
    return key


def new_key() -> str:
    return str(uuid.uuid4())


def raise_if_key_reused(response: requests.Response, key: str, what: str = "message") -> None:
    """422 to a publish: the key was used before for another request. Retrying cannot help,
    and a new key would publish a second message: say so plainly."""
    answer = json_of(response)
    if response.status_code == 422 and isinstance(answer, dict):
        raise BrokerError(
            f"Idempotency-Key {key} was used before for another {what} (body, mode, headers "
            f"or callback); not published, not retried: HTTP 422 {describe(response)}"
        )
