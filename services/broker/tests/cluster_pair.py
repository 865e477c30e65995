"""Two replicas of one queue on one Valkey, in the test's process, wired as app.Cluster wires
them, lanes included: the owner, a broker with its lease, its announcer, its intake and the
delegation of its lanes (delegation.py); and a standby, which never takes the queue but says
it is there (a lease of its own, announced as a standby's each third of a lease), takes
publishes through the cluster's inbox (acceptor.py) and delivers the lanes the owner gives
it (lane_host.py). The standby says so before the owner's broker starts, so the owner's
lanes are spread over both from its first subscriber on (each new one to the replica with
the fewest, the owner counting one more: with three subscribers, two on the standby and
one on the owner). Each has its own Inbox and LaneWire, so its own Valkey connections, as
two processes would.

Closing an inbox or a lane wire waits for its waiting thread to finish its wait (the owner's
blocking reads of the inbox and of the lanes' outcomes, the standby's pub/sub and its read
of its lanes: up to a second each), which nothing else needs to wait for: the pair leaves
those closes to greenlets of their own, in `closing`, for its user to join when it likes (a
test, once at its end rather than once per example)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import gevent
import valkey

from broker.acceptor import Acceptor
from broker.cloudevents import CloudEventsFormat
from broker.core import Broker
from broker.delegation import Delegation
from broker.delivery import Courier
from broker.guard import CallbackGuard
from broker.inbox import Inbox
from broker.intake import Announcer, Intake
from broker.lane_host import LaneHost
from broker.lane_wire import LaneWire
from broker.lanes import Lane
from broker.metrics import BrokerMetrics
from broker.publication import Publication
from broker.settings import BrokerSettings
from broker.storage.lease import OwnerLease
from broker.storage.valkey import ValkeyStore
from broker.wiring import build_broker
from groker_common.http import HttpPool


class Owner:
    """The replica that owns the queue: takes the lease (nobody else may hold it), keeps it
    while it runs, reads what the standby puts into the inbox, and opens its lanes here or
    on the standby (a Delegation, as app.Cluster.delegate makes it)."""

    def __init__(self, settings: BrokerSettings) -> None:
        url, prefix = settings.valkey_url, settings.valkey_prefix
        self._settings = settings
        self.lease = OwnerLease(url, prefix, settings.lease_seconds, name="owner")
        assert self.lease.try_acquire(), "another replica owns the queue"
        self._keeping = gevent.spawn(self.lease.keep)
        self._inbox = Inbox(url, prefix)
        self._announcer = Announcer(self._inbox)
        self._wire = LaneWire(url, prefix)
        self.delegation: Delegation | None = None
        self.broker = build_broker(
            settings,
            owner_token=self.lease.token,
            announce=self._announcer,
            delegate=self._delegate,
        )
        self.broker.start()
        self._intake = Intake(self.broker, self._inbox, cast(ValkeyStore, self.broker.store))
        self._intake.start()

    def _delegate(
        self, local: Callable[..., Lane], publication: Publication
    ) -> Callable[..., Lane]:
        self.delegation = Delegation(
            self._wire,
            self.lease,
            self.lease.token,
            local,
            publication,
            self._settings.lane_capacity,
        )
        return self.delegation.open_lane  # type: ignore[return-value]

    def stop(self) -> gevent.Greenlet:
        """A graceful stop: intake and broker stopped (its lanes on the standby drained as
        its own are, their outcomes still heard), the delegation stopped, then the lease
        handed over; returns the greenlet closing the inbox and the lane wire."""
        self._intake.stop()
        self.broker.stop()
        if self.delegation is not None:
            self.delegation.stop()
        self._announcer.stop()
        self._keeping.kill()
        self.lease.release()
        return gevent.spawn(_close_all, [self._inbox.close, self._wire.close])


class ClusterPair:
    """The owner and a standby; the standby stays while the owner is restarted.

    `standby` is the standby's publishing end (its Acceptor, which takes publishes as the
    broker does); `standby_lease` says it is there, as a standby; `lane_host` delivers the
    owner's lanes on it."""

    def __init__(self, settings: BrokerSettings, closing: list[gevent.Greenlet]) -> None:
        self.settings = settings
        self._closing = closing
        url, prefix = settings.valkey_url, settings.valkey_prefix
        # Here before the owner's broker restores its subscribers and takes new ones.
        self.standby_lease = OwnerLease(url, prefix, settings.lease_seconds, name="standby")
        self.standby_lease.announce("standby")
        self._announcing = gevent.spawn(self._announce_forever)
        self._http = HttpPool()
        courier = Courier(
            self._http,
            CallbackGuard(settings.allowed_networks),
            settings.delivery_attempts,
            settings.delivery_timeout,
            BrokerMetrics().delivery_latency,
            CloudEventsFormat(settings.cloudevents_source),
        )
        self.lane_host = LaneHost(
            LaneWire(url, prefix), self.standby_lease, courier, settings.lane_capacity
        )
        self.lane_host.start()
        self.standby = Acceptor(
            settings,
            Inbox(url, prefix),
            CallbackGuard(settings.allowed_networks),
        )
        try:
            self.owner = Owner(settings)
        except BaseException:
            self._close_standby()
            raise

    def _announce_forever(self) -> None:
        """What a standby's lease does while it waits (try_acquire), but never the taking."""
        while True:
            gevent.sleep(self.standby_lease.seconds / 3)
            try:
                self.standby_lease.announce("standby")
            except valkey.ValkeyError:
                continue  # as try_acquire does: said again a third of a lease later

    @property
    def broker(self) -> Broker:
        """The owner's broker: the one that subscribes, publishes and keeps the queue."""
        return self.owner.broker

    def restart_owner(self) -> None:
        """The owner stops and a new one (a new lease token, a new broker, a new intake, a
        new delegation) starts from what Valkey holds."""
        self._closing.append(self.owner.stop())
        self.owner = Owner(self.settings)

    def close(self) -> None:
        try:
            self._closing.append(self.owner.stop())
        finally:
            self._close_standby()

    def _close_standby(self) -> None:
        # Gone from the roster now, not once the greenlets get to it: the next pair's
        # standby has the same name.
        self._announcing.kill()
        self.standby_lease.release()
        self._closing.append(gevent.spawn(_close_all, [self.lane_host.stop, self._http.close]))
        self._closing.append(gevent.spawn(self.standby.close))


def _close_all(closes: list[Callable[[], None]]) -> None:
    for close in closes:
        close()
