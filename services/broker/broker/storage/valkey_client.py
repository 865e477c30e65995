"""How a broker reaches Valkey: one server at GROKER_VALKEY_URL, or, with
GROKER_VALKEY_SENTINELS, whichever server the Sentinels say is the primary of
GROKER_VALKEY_SERVICE, asked again after every failover (the client reconnects through
them when its connection to the old primary breaks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import valkey
from valkey.connection import SSLConnection, parse_url
from valkey.sentinel import Sentinel

from broker.storage.blocking import Blocking

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


@dataclass(frozen=True)
class ValkeyTarget:
    url: str
    # "host:port" of each Sentinel; none: `url` is the server itself.
    sentinels: tuple[str, ...] = ()
    service: str = "groker"

    @classmethod
    def from_settings(cls, settings: BrokerSettings) -> ValkeyTarget:
        return cls(settings.valkey_url, tuple(settings.valkey_sentinels), settings.valkey_service)

    def __str__(self) -> str:
        if self.sentinels:
            return f"the primary of {self.service!r} (Sentinels {', '.join(self.sentinels)})"
        return self.url

    def client(self, timeout: float | None, connect_timeout: float) -> valkey.Valkey:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
        }
        if not self.sentinels:
            return valkey.Valkey.from_url(self.url, **options)
        # Through Sentinels the URL still says how to log in and which database to use;
        # its host and port are the Sentinels' to give.
        parts = parse_url(self.url)
        for name in ("username", "password", "db"):
            if name in parts:
                options[name] = parts[name]
        if parts.get("connection_class") is SSLConnection:
            options["ssl"] = True
        sentinel = Sentinel(
            [_address(s) for s in self.sentinels],
            sentinel_kwargs={"socket_timeout": connect_timeout},
            socket_timeout=timeout,
        )
        return sentinel.master_for(self.service, **options)


class StreamReader:
    """Blocking reads of Valkey streams (XREAD BLOCK), with a connection made and used
    there only, run so that a greenlet waiting on one holds up no other (blocking.py):
    inline where sockets are monkey-patched, on a thread of their own where they are not
    (the tests' processes)."""

    def __init__(self, target: ValkeyTarget, timeout: float, count: int) -> None:
        self._client = target.client(timeout, 2.0)
        self._reading = Blocking()
        self._count = count

    def read(self, key: str, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Entries of `key` after `after` ("0-0": every one), waiting up to `block_ms` for
        one: (id, fields) each."""
        got = self._reading.apply(
            self._client.xread, ({key: after},), {"count": self._count, "block": block_ms}
        )
        return [(str(i), fields) for _, entries in got or [] for i, fields in entries]

    def close(self) -> None:
        self._reading.apply(self._client.close)
        self._reading.kill()


def release(client: valkey.Valkey) -> None:
    """Close a client's connections, those it made to the Sentinels to find the primary
    too (its own close() leaves them to the garbage collector)."""
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        sentinel.close()


def _address(sentinel: str) -> tuple[str, int]:
    host, _, port = sentinel.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"GROKER_VALKEY_SENTINELS: {sentinel!r} is not host:port")
    return host, int(port)
