"""The `groker` command: publish, subscribe, stats and subscriptions, over the broker's
HTTP API (see the README's "HTTP API")."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
import requests

from groker_cli.broker_api import (
    MAX_RETRY_WAIT,
    BrokerApi,
    BrokerError,
    NotPublishedInTime,
    Unreachable,
    describe,
    json_of,
)
from groker_cli.receiver import Receiver

# `publish -` shows a progress bar from this many lines on.
PROGRESS_MIN_LINES = 50
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
# What Docker Compose (with `extra_hosts: host-gateway`) and Docker Desktop call the host.
DOCKER_HOST_NAME = "host.docker.internal"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


def _warn(text: str) -> None:
    click.echo(f"groker: {text}", err=True)


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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the broker to connect and to answer "
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


# --- publish ---------------------------------------------------------------------------


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


@cli.command(short_help="Publish a message, or one per line of stdin.")
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
@click.option(
    "--sync-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    envvar="GROKER_SYNC_TIMEOUT",
    show_envvar=True,
    metavar="SECONDS",
    help="The broker's sync timeout: how long it holds a --sync publish before answering 504.",
)
@click.option(
    "--retries",
    metavar="N",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="How often to publish again when the broker is full or stopping "
    f"(503/429 with Retry-After, waited out, {MAX_RETRY_WAIT:g} s at most each).",
)
@click.pass_obj
def publish(
    api: BrokerApi,
    body: str,
    sync: bool,
    callback: str | None,
    headers: dict[str, str],
    sync_timeout: float,
    retries: int,
) -> None:
    """Publish BODY as one message, or with `-` each line of stdin as one message.

    BODY is sent as JSON when it parses as JSON (`'{"n": 1}'`, `42`, `true`), otherwise as
    a JSON string. Blank stdin lines are skipped. Prints the broker's answer as one JSON
    line per message: `{"id", "seq", "status": "queued"}`, or with --sync the outcome
    `{"id", "seq", "status": "published", "delivered", "failed", "published_at"}`.

    \b
    Examples:
      groker publish '{"order": 17, "total": 9.5}'
      groker publish --sync 'hello'
      seq 1 1000 | groker publish -
    """
    if sync and callback:
        raise click.UsageError("--callback is for async messages; --sync waits instead")
    template: dict[str, Any] = {"mode": "sync" if sync else "async"}
    if callback:
        template["callback"] = callback
    if headers:
        template["headers"] = headers
    read_timeout = api.timeout + sync_timeout if sync else api.timeout

    def publish_one(text: str) -> None:
        def on_retry(wait: float, attempt: int, response: requests.Response) -> None:
            _warn(
                f"the broker is busy (HTTP {response.status_code} {describe(response)}); "
                f"publishing again in {wait:g} s ({attempt}/{retries})"
            )

        response = api.publish(
            {**template, "body": parse_body(text)}, read_timeout, retries, on_retry
        )
        answer = json_of(response)
        # Two answers that name an accepted message: print them like any other, so the id
        # can be looked up later, and exit with the code that says what happened.
        if isinstance(answer, dict) and "id" in answer:
            if response.status_code == 504:
                _echo_json(answer)
                raise NotPublishedInTime(
                    f"message {answer['id']} was not published within the broker's sync "
                    "timeout; it stays queued and is published later"
                )
            if response.status_code == 503:
                _echo_json(answer)
                raise BrokerError(
                    f"the broker is stopping; message {answer['id']} stays queued and is "
                    "published after its restart"
                )
        _echo_json(api.answer(response))

    if body != "-":
        publish_one(body)
        return

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
                publish_one(text)
            except click.ClickException as exc:
                raise type(exc)(f"stdin line {line_number}: {exc.message}") from None


# --- subscribe -------------------------------------------------------------------------


def _parse_listen(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (PORT 0: any free port)")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def local_address_towards(host: str, port: int) -> str:
    """The address this machine uses to reach host:port: `connect` on a UDP socket picks
    the route and the source address without sending anything."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        return str(probe.getsockname()[0])


def default_callback_url(broker_url: str, port: int) -> str:
    """Where the broker can reach a receiver listening on `port` of this machine.

    A broker on loopback is most likely the compose deployment on this machine, inside
    Docker, where loopback is the container's own: it reaches the host by the name
    host.docker.internal. Any other broker is reached over the network, so the receiver is
    announced at the address this machine uses towards it."""
    parts = urlsplit(broker_url)
    host = parts.hostname or "localhost"
    if _is_loopback(host):
        return f"http://{DOCKER_HOST_NAME}:{port}/"
    broker_port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = local_address_towards(host, broker_port)
    except OSError as exc:
        raise Unreachable(
            f"cannot reach the broker at {broker_url}: no route to it "
            f"({exc.strerror or exc}); pass --callback-url"
        ) from None
    return f"http://{_url_host(address)}:{port}/"


def _print_body(message: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(message["body"], ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`groker subscribe | head -3`): stop as on Ctrl-C. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os.kill(os.getpid(), signal.SIGTERM)


@cli.command(short_help="Print the messages the broker delivers here.")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    default="0.0.0.0:0",
    show_default=True,
    callback=_parse_listen,
    help="Where the local webhook receiver listens; port 0 picks a free one.",
)
@click.option(
    "--callback-url",
    metavar="URL",
    help="The URL the broker is to deliver to, when it reaches this machine by another "
    "name or port (NAT, port forwarding, a container). Default: for a broker on "
    f"localhost (compose on this machine) http://{DOCKER_HOST_NAME}:PORT/, otherwise "
    "http://<this machine's address towards the broker>:PORT/.",
)
@click.pass_obj
def subscribe(api: BrokerApi, listen: tuple[str, int], callback_url: str | None) -> None:
    """Receive messages here: print each message's body as one JSON line on stdout.

    Starts a webhook receiver on this machine, subscribes it to the broker, and prints
    every message the broker delivers, in order, once each. Ctrl-C (or SIGTERM)
    unsubscribes and exits 0; a second Ctrl-C quits at once.

    The receiver answers the broker's subscription challenge, checks every delivery's
    signature when the broker hands out a signing secret (answering 401 and warning on
    stderr when one does not verify), and drops repeated deliveries.

    \b
    Examples:
      groker subscribe
      groker subscribe | jq .total
      groker subscribe --listen 0.0.0.0:9000 --callback-url http://my-host:9000/
    """
    host, port = listen
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # reach only sigwait() below: no handler runs at some random point of a request.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        receiver = Receiver(host, port, on_message=_print_body, on_warning=_warn)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="'--listen'"
        ) from None
    receiver.start()
    try:
        url = callback_url or default_callback_url(api.url, receiver.port)
        if callback_url is None and _is_loopback(host):
            _warn(f"listening on {host} only: a broker elsewhere (in Docker too) cannot reach it")
        try:
            answer = api.call("POST", "/subscriptions", {"callback": url})
        except BrokerError as exc:
            if callback_url is not None:
                raise
            raise BrokerError(
                f"{exc.message} (the callback {url} was worked out here; if the broker cannot "
                "reach it, pass --callback-url)"
            ) from None
        if not (isinstance(answer, dict) and isinstance(answer.get("id"), str)):
            raise BrokerError(f"the broker's subscribe answer has no id: {answer!r:.200}")
        subscription_id = answer["id"]
        try:
            receiver.subscribed(answer.get("secret"))
        except ValueError as exc:
            _unsubscribe(api, subscription_id)
            raise BrokerError(f"the broker's subscribe answer is unusable: {exc}") from None
        _warn(
            f"subscribed as {subscription_id}; the broker delivers to {url} "
            f"(listening on {_url_host(host)}:{receiver.port}). Ctrl-C to stop."
        )
        signal.sigwait(stop_signals)
        # From here a second Ctrl-C interrupts the unsubscribe (exit 1, "Aborted!").
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        _unsubscribe(api, subscription_id)
    finally:
        receiver.close()
    if receiver.rejected:
        _warn(f"{receiver.rejected} deliveries were rejected for a bad signature")


def _unsubscribe(api: BrokerApi, subscription_id: str) -> None:
    response = api.request("DELETE", f"/subscriptions/{subscription_id}")
    if response.status_code == 404:  # the broker had already removed us
        _warn(f"subscription {subscription_id} was already gone")
        return
    api.answer(response)
    _warn(f"unsubscribed {subscription_id}")


# --- looking in ------------------------------------------------------------------------


@cli.command(short_help="Show the broker's statistics.")
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


@cli.command(short_help="List the broker's subscriptions.")
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


def main() -> None:
    cli(prog_name="groker")
