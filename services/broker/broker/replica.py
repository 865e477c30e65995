"""This broker process as one replica: the broker itself when it runs alone (the SQLite and
memory stores), or, when replicas share one Valkey, the owner of the queue or a standby.

Only the owner of the ownership lease (storage/lease.py) runs a broker. A standby takes
publishes all the same, through the cluster's inbox (its `acceptor`, see inbox.py), relays
every other request to the owner (forward.py), and takes over when the owner goes.

A replica that loses the lease stops at once (`on_lost`): its store can no longer write,
and its lanes must not go on delivering next to the new owner's. So does an owner whose
store is no longer sound (a write failed and may have been applied): it hands the lease
over first, and whichever replica takes it, this one restarted included, starts from what
Valkey holds."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import valkey

from broker.acceptor import Acceptor
from broker.core import Broker
from broker.storage.lease import OwnerLease

log = logging.getLogger(__name__)

# Seconds between looks at the store's soundness while owning: a store that is not sound
# refuses every write, so this bounds only how long publishers get 503 before the handover.
SOUNDNESS_CHECK = 0.1
# Seconds a new owner waits before it starts (at most a fifth of the lease).
HANDOVER_PAUSE = 0.3


class Replica:
    def __init__(
        self,
        build: Callable[[str | None], Broker],
        lease: OwnerLease | None,
        on_active: Callable[[Broker], None],
        on_lost: Callable[[], None],
        acceptor: Acceptor | None = None,
        name: str = "",
    ) -> None:
        self.name = name or (lease.name if lease is not None else "")
        self._build = build  # a broker, fenced by the lease's token if there is one
        self._lease = lease
        self._on_active = on_active
        self._on_lost = on_lost
        self._owning: gevent.Greenlet | None = None
        self._stopping = False
        self.broker: Broker | None = None
        self.acceptor = acceptor

    def start(self) -> None:
        """Alone: start the broker now. Over a shared store: wait for the lease meanwhile."""
        if self._lease is None:
            self._activate(None)
        else:
            self._owning = gevent.spawn(self._own, self._lease)

    def _activate(self, token: str | None) -> None:
        broker = self._build(token)
        broker.start()
        self.broker = broker
        self._on_active(broker)

    def _own(self, lease: OwnerLease) -> None:
        lease.acquire()
        # The previous owner's lanes on other replicas stop within lane_host.CONFIRM of
        # its loss: nothing is delivered before then, so that no subscriber gets a message
        # from this owner's lanes before an older one from theirs.
        gevent.sleep(min(HANDOVER_PAUSE, lease.seconds / 5))
        self._activate(lease.token)
        assert self.broker is not None
        keeping = gevent.spawn(lease.keep)  # returns once the lease is lost
        try:
            while not keeping.ready() and lease.held() and self.broker.store.sound:
                gevent.sleep(SOUNDNESS_CHECK)
        finally:
            # Not renewed in time (this process was paused past its lease, say): another
            # replica may own the queue by now, whatever the keeper has yet to find out.
            lost = keeping.ready() or not lease.held()
            keeping.kill()
        if self._stopping:
            return
        if not lost:
            log.error("a store write failed: handing the queue over, to start again from Valkey")
            lease.release()
        self._on_lost()

    @property
    def owning(self) -> bool:
        """Runs the broker, and (over a shared store) as far as it can tell still owns the
        queue: a replica woken past its lease answers as a standby until it has exited."""
        return self.broker is not None and (self._lease is None or self._lease.held())

    @property
    def ready(self) -> bool:
        """Ready to take publishes: the owner once its broker runs; a standby that has an
        acceptor at once (publishes wait in the inbox until a replica owns the queue)."""
        broker = self.broker
        if self.owning and broker is not None:
            return broker.ready and not broker.draining
        return self.acceptor is not None and not self.acceptor.draining

    @property
    def role(self) -> str:
        if self._lease is None:
            return "alone"
        return "owner" if self.owning else "standby"

    def roster(self) -> list[dict[str, object]]:
        """The replicas there are, each with its role: this one alone, or every one that
        shares the queue (as far as Valkey says; this one only if Valkey cannot say)."""
        if self._lease is not None:
            try:
                return self._lease.roster()
            except valkey.ValkeyError as exc:
                log.warning("cannot read the replicas' roster: %s", exc)
        return [{"name": self.name, "role": self.role, "seen_ago": 0.0}]

    def drain(self) -> None:
        self._stopping = True
        if self.acceptor is not None:
            self.acceptor.drain()
        if self.broker is not None:
            self.broker.drain()

    def stop(self) -> None:
        """Stop the broker, then hand the lease over so that a standby takes over at once."""
        self._stopping = True
        if self._owning is not None:
            self._owning.kill()
        if self.broker is not None:
            self.broker.stop()
        if self._lease is not None:
            self._lease.release()
        if self.acceptor is not None:
            self.acceptor.close()
