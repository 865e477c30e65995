"""Two replicas of one queue on one Valkey, in the test's process: the owner, a broker with
its lease, its announcer and its intake (wired as app.Cluster wires them), and a standby that
takes publishes through the cluster's inbox (acceptor.py). Each has its own Inbox, so its own
Valkey connections, as two processes would.

The tests' process is not monkey-patched, and an inbox waits on Valkey (the owner's blocking
read, everyone's events channel): over plain sockets that wait would hold every greenlet of
the process. So the inboxes and the lease talk to Valkey over gevent's sockets, as they do in
a (patched) gunicorn worker. The store needs none: it talks to Valkey on its writer thread."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast

import gevent
import gevent.socket
import valkey

from broker.acceptor import Acceptor
from broker.core import Broker
from broker.guard import CallbackGuard
from broker.inbox import Inbox
from broker.intake import Announcer, Intake
from broker.settings import BrokerSettings
from broker.storage.lease import OwnerLease
from broker.storage.valkey import ValkeyStore
from broker.storage.valkey_client import ValkeyTarget
from broker.wiring import build_broker


class CooperativeConnection(valkey.Connection):
    """A Valkey connection over a gevent socket: while it waits, the other greenlets run."""

    def _connect(self) -> Any:
        sock = gevent.socket.create_connection((self.host, self.port), self.socket_connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.socket_timeout)
        return sock


@dataclass(frozen=True)
class CooperativeTarget(ValkeyTarget):
    """The one Valkey server at `url`, reached over cooperative connections."""

    def client(self, timeout: float | None, connect_timeout: float) -> valkey.Valkey:
        return valkey.Valkey.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            connection_class=CooperativeConnection,
        )


class Owner:
    """The replica that owns the queue: takes the lease (nobody else may hold it), keeps it
    while it runs, and reads what the standby puts into the inbox."""

    def __init__(self, settings: BrokerSettings) -> None:
        target = CooperativeTarget(settings.valkey_url)
        self.lease = OwnerLease(target, settings.valkey_prefix, settings.lease_seconds, "owner")
        assert self.lease.try_acquire(), "another replica owns the queue"
        self._keeping = gevent.spawn(self.lease.keep)
        self._inbox = Inbox(target, settings.valkey_prefix)
        self._announcer = Announcer(self._inbox)
        self.broker = build_broker(settings, owner_token=self.lease.token, announce=self._announcer)
        self.broker.start()
        self._intake = Intake(self.broker, self._inbox, cast(ValkeyStore, self.broker.store))
        self._intake.start()

    def stop(self) -> None:
        """A graceful stop: intake and broker stopped, then the lease handed over."""
        self._intake.stop()
        self.broker.stop()
        self._announcer.stop()
        self._keeping.kill()
        self.lease.release()
        self._inbox.close()


class ClusterPair:
    """The owner and a standby; the standby stays while the owner is restarted."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self.owner = Owner(settings)
        self.standby = Acceptor(
            settings,
            Inbox(CooperativeTarget(settings.valkey_url), settings.valkey_prefix),
            CallbackGuard(settings.allowed_networks),
        )

    @property
    def broker(self) -> Broker:
        """The owner's broker: the one that subscribes, publishes and keeps the queue."""
        return self.owner.broker

    def restart_owner(self) -> None:
        """The owner stops and a new one (a new lease token, a new broker, a new intake)
        starts from what Valkey holds."""
        self.owner.stop()
        self.owner = Owner(self.settings)

    def close(self) -> None:
        try:
            self.owner.stop()
        finally:
            self.standby.close()
