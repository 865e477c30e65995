"""What the commands write: answers as JSON lines on stdout, everything meant for a reader
(warnings, progress) on stderr, so that stdout can be piped into another program."""

from __future__ import annotations

import json
from typing import Any

import click


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def warn(text: str) -> None:
    click.echo(f"groker: {text}", err=True)
