"""`groker subscribe`: a webhook receiver on this machine, subscribed to the broker until
Ctrl-C, printing every message's body."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import click

from groker_cli.broker_api import BrokerApi, BrokerError
from groker_cli.callback_url import (
    DOCKER_HOST_NAME,
    default_callback_url,
    is_loopback,
    url_host,
)
from groker_cli.console import warn
from groker_cli.receiver import Receiver

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _parse_listen(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (PORT 0: any free port)")
    return host, int(port)


def _print_body(message: dict[str, Any]) -> None:
    try:
        sys.stdout.write(json.dumps(message["body"], ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`groker subscribe | head -3`): stop as on Ctrl-C. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os.kill(os.getpid(), signal.SIGTERM)


def _start_receiver(host: str, port: int) -> Receiver:
    try:
        receiver = Receiver(host, port, on_message=_print_body, on_warning=warn)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", param_hint="'--listen'"
        ) from None
    receiver.start()
    return receiver


def _subscribe(api: BrokerApi, receiver: Receiver, url: str, url_given: bool) -> str:
    """Subscribe `url` and hand the broker's secret to the receiver; the subscription id."""
    try:
        answer = api.call("POST", "/subscriptions", {"callback": url})
    except BrokerError as exc:
        if url_given:
            raise
        raise BrokerError(
            f"{exc.message} (the callback {url} was worked out here; if the broker cannot "
            "reach it, pass --callback-url)"
        ) from None
    if not (isinstance(answer, dict) and isinstance(answer.get("id"), str)):
        raise BrokerError(f"the broker's subscribe answer has no id: {answer!r:.200}")
    try:
        receiver.subscribed(answer.get("secret"))
    except ValueError as exc:
        _unsubscribe(api, answer["id"])
        raise BrokerError(f"the broker's subscribe answer is unusable: {exc}") from None
    return str(answer["id"])


def _unsubscribe(api: BrokerApi, subscription_id: str) -> None:
    response = api.request("DELETE", f"/subscriptions/{subscription_id}")
    if response.status_code == 404:  # the broker had already removed us
        warn(f"subscription {subscription_id} was already gone")
        return
    api.answer(response)
    warn(f"unsubscribed {subscription_id}")


def _receive_until_stopped(
    api: BrokerApi, receiver: Receiver, host: str, callback_url: str | None
) -> None:
    url = callback_url or default_callback_url(api.url, receiver.port)
    if callback_url is None and is_loopback(host):
        warn(f"listening on {host} only: a broker elsewhere (in Docker too) cannot reach it")
    subscription_id = _subscribe(api, receiver, url, callback_url is not None)
    warn(
        f"subscribed as {subscription_id}; the broker delivers to {url} "
        f"(listening on {url_host(host)}:{receiver.port}). Ctrl-C to stop."
    )
    signal.sigwait(STOP_SIGNALS)
    # From here a second Ctrl-C interrupts the unsubscribe (exit 1, "Aborted!").
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _unsubscribe(api, subscription_id)


@click.command(short_help="Print the messages the broker delivers here.")
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
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # reach only sigwait(): no handler runs at some random point of a request.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    receiver = _start_receiver(host, port)
    try:
        _receive_until_stopped(api, receiver, host, callback_url)
    finally:
        receiver.close()
    if receiver.rejected:
        warn(f"{receiver.rejected} deliveries were rejected for a bad signature")
