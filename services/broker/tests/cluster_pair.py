"""Two replicas of one queue on one Valkey, in the test's process: the owner, a broker with
its lease, its announcer and its intake (wired as app.Cluster wires them), and a standby that
takes publishes through the cluster's inbox (acceptor.py). Each has its own Inbox, so its own
Valkey connections, as two processes would.

Closing an inbox waits for its waiting threads to finish their wait (the owner's blocking
read, the standby's pub/sub: up to a second each), which nothing else needs to wait for:
the pair leaves those closes to greenlets of their own, in `closing`, for its user to join
when it likes (a test, once at its end rather than once per example)."""

from __future__ import annotations

from typing import cast

import gevent

from broker.acceptor import Acceptor
from broker.core import Broker
from broker.guard import CallbackGuard
from broker.inbox import Inbox
from broker.intake import Announcer, Intake
from broker.settings import BrokerSettings
from broker.storage.lease import OwnerLease
from broker.storage.valkey import ValkeyStore
from broker.wiring import build_broker


class Owner:
    """The replica that owns the queue: takes the lease (nobody else may hold it), keeps it
    while it runs, and reads what the standby puts into the inbox."""

    def __init__(self, settings: BrokerSettings) -> None:
        url, prefix = settings.valkey_url, settings.valkey_prefix
        self.lease = OwnerLease(url, prefix, settings.lease_seconds, name="owner")
        assert self.lease.try_acquire(), "another replica owns the queue"
        self._keeping = gevent.spawn(self.lease.keep)
        self._inbox = Inbox(url, prefix)
        self._announcer = Announcer(self._inbox)
        self.broker = build_broker(settings, owner_token=self.lease.token, announce=self._announcer)
        self.broker.start()
        self._intake = Intake(self.broker, self._inbox, cast(ValkeyStore, self.broker.store))
        self._intake.start()

    def stop(self) -> gevent.Greenlet:
        """A graceful stop: intake and broker stopped, then the lease handed over; returns
        the greenlet closing the inbox."""
        self._intake.stop()
        self.broker.stop()
        self._announcer.stop()
        self._keeping.kill()
        self.lease.release()
        return gevent.spawn(self._inbox.close)


class ClusterPair:
    """The owner and a standby; the standby stays while the owner is restarted."""

    def __init__(self, settings: BrokerSettings, closing: list[gevent.Greenlet]) -> None:
        self.settings = settings
        self._closing = closing
        self.owner = Owner(settings)
        self.standby = Acceptor(
            settings,
            Inbox(settings.valkey_url, settings.valkey_prefix),
            CallbackGuard(settings.allowed_networks),
        )

    @property
    def broker(self) -> Broker:
        """The owner's broker: the one that subscribes, publishes and keeps the queue."""
        return self.owner.broker

    def restart_owner(self) -> None:
        """The owner stops and a new one (a new lease token, a new broker, a new intake)
        starts from what Valkey holds."""
        self._closing.append(self.owner.stop())
        self.owner = Owner(self.settings)

    def close(self) -> None:
        try:
            self._closing.append(self.owner.stop())
        finally:
            self._closing.append(gevent.spawn(self.standby.close))
