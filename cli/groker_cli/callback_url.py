"""Where the broker can reach `groker subscribe`'s receiver on this machine, when the user
does not say (--callback-url)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from groker_cli.broker_api import Unreachable

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
# What Docker Compose (with `extra_hosts: host-gateway`) and Docker Desktop call the host.
DOCKER_HOST_NAME = "host.docker.internal"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(address: str) -> str:
    """An address as it stands in a URL: an IPv6 one in brackets."""
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
    if is_loopback(host):
        return f"http://{DOCKER_HOST_NAME}:{port}/"
    broker_port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = local_address_towards(host, broker_port)
    except OSError as exc:
        raise Unreachable(
            f"cannot reach the broker at {broker_url}: no route to it "
            f"({exc.strerror or exc}); pass --callback-url"
        ) from None
    return f"http://{url_host(address)}:{port}/"
