"""The commands that look into the broker without changing anything: stats and
subscriptions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from groker_cli.broker_api import BrokerApi


@click.command(short_help="Show the broker's statistics.")
@click.pass_obj
def stats(api: BrokerApi) -> None:
    """Print the broker's statistics (GET /stats) as indented JSON.

    Queue length, unpublished messages and bytes, the last seq, the subscribers and their
    lane backlog, and the counts: accepted, published, delivered, failed, removed, ...
    """
    click.echo(json.dumps(api.call("GET", "/stats"), indent=2, ensure_ascii=False))


def _when(timestamp: Any) -> str:
    if not isinstance(timestamp, int | float):
        return str(timestamp)
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


@click.command(short_help="List the broker's subscriptions.")
@click.option("--json", "as_json", is_flag=True, help="Print the broker's JSON answer instead.")
@click.pass_obj
def subscriptions(api: BrokerApi, as_json: bool) -> None:
    """List the broker's subscriptions: id, callback and created_at (UTC), as a table."""
    answer = api.call("GET", "/subscriptions")
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    rows = [("id", "callback", "created_at")] + [
        (str(s.get("id")), str(s.get("callback")), _when(s.get("created_at")))
        for s in answer.get("subscriptions", [])
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for row_id, callback, created_at in rows:
        click.echo(f"{row_id:<{widths[0]}}  {callback:<{widths[1]}}  {created_at}")
