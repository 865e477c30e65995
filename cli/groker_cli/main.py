"""The `groker` command: publish, subscribe, stats and subscriptions, over the broker's
HTTP API (see the README's "HTTP API"). This module holds the group and its global
options; each command lives in the module named after what it does."""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from groker_cli.broker_api import BrokerApi
from groker_cli.inspection import stats, subscriptions
from groker_cli.options import seconds_option
from groker_cli.publish import publish
from groker_cli.subscribe import subscribe


def _check_broker_url(_ctx: click.Context, _param: click.Parameter, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{url!r} is not an http:// or https:// URL with a host")
    return url


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Run `groker COMMAND --help` for each command's options.",
)
@click.option(
    "--broker",
    metavar="URL",
    envvar="GROKER_BROKER_URL",
    show_envvar=True,
    default="http://localhost:8000",
    show_default=True,
    callback=_check_broker_url,
    help="Where the broker is.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    envvar="GROKER_TOKEN",
    show_envvar=True,
    help="Bearer token sent with every request (Authorization: Bearer TOKEN): a publish "
    "token for publish, a manage token for subscribe and subscriptions.",
)
@seconds_option(
    "--timeout",
    10.0,
    "How long to wait for the broker to connect and to answer "
    "(a --sync publish waits --sync-timeout longer).",
)
@click.version_option(package_name="groker-cli", prog_name="groker")
@click.pass_context
def cli(ctx: click.Context, broker: str, token: str | None, timeout: float) -> None:
    """Publish to, subscribe to and look into a groker broker.

    \b
    Exit codes:
      0  ok
      1  the broker answered an error (4xx/5xx); its JSON error is printed on stderr
      2  usage error (a wrong option or argument)
      3  the broker cannot be reached (refused, timed out, unknown host)
      4  the broker refused the token, or a token is needed (401/403)
      5  a --sync publish was not published within the broker's sync timeout (504);
         the message stays queued and is published later
    """
    api = BrokerApi(broker, token, timeout)
    ctx.obj = api
    ctx.call_on_close(api.close)


for command in (publish, subscribe, stats, subscriptions):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="groker")
