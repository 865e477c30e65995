"""Option kinds more than one command takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def seconds_option(name: str, default: float, help: str, **extra: Any) -> Callable[..., Any]:
    """A `--NAME SECONDS` option: a time above zero, its default shown in --help."""
    return click.option(
        name,
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=True,
        metavar="SECONDS",
        help=help,
        **extra,
    )
