"""Where the broker may send webhooks: an open relay would let anyone point it at a victim
or at the cloud's metadata service.

A callback's host is resolved and every address checked: link-local and cloud metadata
addresses are always refused; otherwise an address must be public, or inside one of the
allowed networks (loopback included only when listed). The check runs when a callback is
registered and again before deliveries (DNS can change), with a short cache."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

from broker.errors import RefusedDestination

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALWAYS_REFUSED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # link-local, where cloud metadata services answer
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "0.0.0.0/8",
        "224.0.0.0/4",
        "ff00::/8",
        "::/128",
    )
)
CACHE_SECONDS = 10.0


class CallbackGuard:
    """Checks every URL the broker is asked to call (see the module's docstring)."""

    def __init__(self, allowed_networks: list[str]) -> None:
        self._allowed = [ipaddress.ip_network(net, strict=False) for net in allowed_networks]
        self._cache: dict[str, tuple[float, str | None]] = {}

    def check(self, url: str) -> None:
        """Raise RefusedDestination unless every address of the URL's host is allowed."""
        host = urlsplit(url).hostname or ""
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is None or cached[0] < now:
            cached = (now + CACHE_SECONDS, self._refusal(host))
            self._cache[host] = cached
            if len(self._cache) > 10_000:
                self._cache.clear()
        if cached[1] is not None:
            raise RefusedDestination(cached[1])

    def _refusal(self, host: str) -> str | None:
        try:
            addresses = {ipaddress.ip_address(host.strip("[]"))}
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                return f"cannot resolve {host!r}: {exc}"
            addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        for address in addresses:
            reason = self._refuse_address(address)
            if reason:
                return f"{host} resolves to {address}: {reason}"
        return None

    def _refuse_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in ALWAYS_REFUSED):
            return "link-local, metadata, multicast or unspecified addresses are never called"
        if any(address in net for net in self._allowed):
            return ""
        if address.is_loopback:
            return "loopback is refused unless listed in GROKER_ALLOWED_NETWORKS"
        if not address.is_global:
            return "a private address outside GROKER_ALLOWED_NETWORKS"
        return ""
