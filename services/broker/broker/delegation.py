"""The owner's lanes on other replicas (GROKER_STORE=valkey): deliveries, the largest part of
a fan-out's work, spread over every replica, while the owner stays the one sequencer.

A new subscriber's lane goes to whichever live replica holds the fewest (the owner counts
one lane more: it also sequences every message). On the owner such a lane is a
`RemoteLane`: the dispatcher puts messages into it as into any lane, it ships them to its
replica (lane_wire.py), where a `lane_host.LaneHost` delivers them with a lane of its own,
and the outcomes coming back are recorded in the owner's publication as a local lane's are.
The owner keeps every message shipped until its outcome is in (at most `lane_capacity` per
lane: then the dispatcher waits, as on a full local lane).

A replica silent for a lease (killed, paused, cut off) is gone: its lanes move, each to the
replica with the fewest, its messages still out shipped again there first, in seq order;
outcomes of the old assignment are then ignored. The subscriber may receive those again
(at least once), never one out of order from the owner's lanes. While one replica holds
two lanes more than another (one joined, say), a lane moves, one at a time, without
repeats (handover.py)."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Callable
from typing import Protocol, cast

import gevent
import valkey
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed

from broker.coalescing import Coalescer
from broker.handover import HandOver
from broker.lane_wire import LaneWire, Op, message_op, open_op
from broker.lanes import BaseLane, HoldingLane, Lane
from broker.model import Message, Subscriber
from broker.publication import Publication
from broker.storage.lease import OwnerLease

log = logging.getLogger(__name__)

BLOCK_MS = 1000
HEAD_TRIES = 10
# The owner's own load counts this many lanes more than it holds: sequencing (and the
# intake of the others' publishes) is about one lane's work. Measured (bench/cluster.py,
# 10 subscribers on two replicas, publishes half through each): with 5 lanes each the
# owner used ~20% more CPU than the other replica and held the fan-out back; with 4 and 6
# the two are even.
OWNER_EXTRA = 1.0


class Removal(Protocol):
    """The registry, as a lane that moves or gives up needs it."""

    def unsubscribe(self, subscriber_id: str, reason: str | None = None) -> bool: ...

    def replace(self, subscriber_id: str, lane: BaseLane, instead_of: BaseLane) -> None: ...


class Shipper:
    """Everything the owner gives one replica, in order: what comes while a shipment is on
    its way goes in the next (coalescing.py), one message's assignments on this replica in
    one op."""

    def __init__(self, wire: LaneWire, instance: str, name: str, owner: str) -> None:
        self.instance = instance
        self.name = name
        self._wire = wire
        self._owner = owner
        self._ops: Coalescer[Op] = Coalescer(self._ship)

    def add(self, op: Op) -> None:
        self._ops.add(op)

    def deliver(self, assignment: str, message: Message) -> None:
        pending = self._ops.pending
        last = pending[-1] if pending else None
        if last is not None and last[0] == "msg" and last[1] == message.seq:
            last[-1].append(assignment)  # the dispatcher puts one message into every lane
        else:
            self.add(message_op(message, assignment))

    def _ship(self, ops: list[Op]) -> None:
        try:
            self._wire.ship(self.instance, self._owner, ops)
        except valkey.ValkeyError as exc:
            log.warning("could not ship %d ops to %s, again shortly: %s", len(ops), self.name, exc)
            self._ops.again(ops, 0.2)

    def stop(self) -> None:
        self._ops.stop()


class RemoteLane(HoldingLane):
    """A lane whose deliveries another replica makes: to the dispatcher, the registry and
    the dashboard it is a lane like any other. It holds what it shipped until the outcome
    is in."""

    def __init__(
        self,
        subscriber: Subscriber,
        shipper: Shipper,
        capacity: int,
        publication: Publication,
        removal: Removal,
    ) -> None:
        super().__init__(subscriber, publication, capacity)
        self.assignment = f"{subscriber.id}/{uuid.uuid4().hex[:8]}"
        self.shipper = shipper
        self.holder = shipper.name
        self.removal = removal
        shipper.add(open_op(self.assignment, subscriber))

    def _took(self, message: Message) -> None:
        self.shipper.deliver(self.assignment, message)

    def outcome(self, seq: int, delivered: bool) -> None:
        message = self._done_with(seq)
        if message is not None:
            self._resolve(message, delivered)

    def close(self) -> None:
        """Stop delivering (unsubscribed, removed, or the broker stops); whatever is out
        counts as failed for this subscriber, as a local lane's queue does."""
        if self.closed:
            return
        self.closed = True
        self.shipper.add(["close", self.assignment])
        for message in self._release():
            self._resolve(message, delivered=False)

    def retire(self) -> None:
        """Handed over, with nothing left out: its replica drops its lane."""
        self.closed = True
        self.shipper.add(["close", self.assignment])

    def give_up(self) -> list[Message]:
        """Its replica is gone while it hands over: what is out, in seq order, for the lane
        taking over to deliver first."""
        self.closed = True
        return self._release()

    def move_to(self, lane: BaseLane) -> None:
        """Deliver through `lane` from now on, starting with what is out, in seq order (a
        new lane takes them all without waiting: nothing comes in between)."""
        for message in self._release():
            lane.put(message)
        self.successor = lane
        self.closed = True


class Delegation:
    """Opens the owner's lanes (the registry's `open_lane`), here or on other replicas;
    hears the outcomes; moves the lanes of replicas that are gone."""

    def __init__(
        self,
        wire: LaneWire,
        lease: OwnerLease,
        owner: str,
        local: Callable[..., Lane],
        publication: Publication,
        capacity: int,
    ) -> None:
        self._wire = wire
        self._lease = lease
        self._owner = owner
        self._local = local
        self._publication = publication
        self._capacity = capacity
        self._lanes: dict[str, RemoteLane] = {}  # by assignment
        self._shippers: dict[str, Shipper] = {}  # by instance
        self._here: weakref.WeakSet[Lane] = weakref.WeakSet()
        self._handing: HandOver | None = None
        # Outcomes from before this owner began are not its own.
        self._after = self._head()
        self._greenlets = [gevent.spawn(self._hear_forever), gevent.spawn(self._watch_forever)]

    def _head(self) -> str:
        return Retrying(
            stop=stop_after_attempt(HEAD_TRIES),
            wait=wait_fixed(0.5),
            retry=retry_if_exception_type(valkey.ValkeyError),
            sleep=gevent.sleep,
            reraise=True,
        )(self._wire.outcomes_head)

    def open_lane(
        self, subscriber: Subscriber, removal: Removal, avoid: str | None = None
    ) -> Lane | RemoteLane:
        target = self._choose(avoid)
        if target is None:
            lane = self._local(subscriber=subscriber, removal=removal)
            lane.holder = self._lease.name
            self._here.add(lane)
            return lane
        name, instance = target
        shipper = self._shippers.get(instance)
        if shipper is None:
            shipper = self._shippers[instance] = Shipper(self._wire, instance, name, self._owner)
        remote = RemoteLane(subscriber, shipper, self._capacity, self._publication, removal)
        self._lanes[remote.assignment] = remote
        return remote

    def _choose(self, avoid: str | None) -> tuple[str, str] | None:
        """The replica with the fewest lanes (name, instance), or None for this one."""
        try:
            roster = self._lease.roster()
        except valkey.ValkeyError as exc:
            log.warning("cannot read the roster, the lane stays here: %s", exc)
            return None
        held: dict[str, int] = {}
        for lane in self._lanes.values():
            if lane.active:
                held[lane.shipper.instance] = held.get(lane.shipper.instance, 0) + 1
        load = {
            (str(r["name"]), str(r["instance"])): held.get(str(r["instance"]), 0)
            for r in roster
            if r["role"] == "standby" and r.get("instance") not in (None, avoid, self._owner)
        }
        mine = sum(1 for lane in self._here if lane.active)
        mine += OWNER_EXTRA
        best = min(load, key=load.__getitem__, default=None)
        return None if best is None or load[best] > mine else best

    def _hear_forever(self) -> None:
        while True:
            try:
                entries = self._wire.outcomes(self._after, BLOCK_MS)
            except valkey.ValkeyError as exc:
                log.warning("cannot read the lanes' outcomes: %s", exc)
                gevent.sleep(0.5)
                continue
            for entry_id, owner, ops in entries:
                self._after = entry_id
                if owner == self._owner:
                    for op in ops:
                        self._heard(op)

    def _heard(self, op: Op) -> None:
        lane = self._lanes.get(op[1])
        if lane is None:
            return  # a lane closed or moved since: its outcomes are not counted
        if op[0] == "d":
            lane.outcome(op[2], op[3])
        elif op[0] == "r":
            lane.removal.unsubscribe(lane.subscriber.id, op[2])
        elif op[0] == "x":
            self._move(lane, avoid=None)

    def _watch_forever(self) -> None:
        while True:
            gevent.sleep(self._lease.seconds / 3)
            for lane in [lane for lane in self._lanes.values() if lane.closed]:
                self._lanes.pop(lane.assignment, None)
            try:
                roster = self._lease.roster()
            except valkey.ValkeyError as exc:
                log.warning("cannot read the roster: %s", exc)
                continue
            here = {r.get("instance") for r in roster if r["role"] != "unresponsive"}
            for instance, shipper in list(self._shippers.items()):
                if instance not in here:
                    self._gone(shipper)
            self._rebalance(roster)

    def _rebalance(self, roster: list[dict[str, object]]) -> None:
        """One lane moves (handover.py), one at a time, while a replica holds two more than
        another (counting the owner's one more): from the one holding the most to the one
        holding the fewest, where a new subscriber would go. So a replica that joins takes
        its share of the lanes there are, not only of the subscribers to come."""
        if self._handing is not None and not self._handing.done:
            return
        standbys = {
            str(r["instance"])
            for r in roster
            if r["role"] == "standby" and r.get("instance") not in (None, self._owner)
        }
        if not standbys:
            return
        held: dict[str, list[Lane | RemoteLane]] = {instance: [] for instance in standbys}
        for remote in self._lanes.values():
            if remote.active:
                held.get(remote.shipper.instance, []).append(remote)
        mine: list[Lane | RemoteLane] = [lane for lane in self._here if lane.active]
        fewest = min(len(lanes) for lanes in held.values())
        most, lanes = max(
            [(len(mine) + OWNER_EXTRA, mine), *((len(lanes), lanes) for lanes in held.values())],
            key=lambda load: load[0],
        )
        if most - fewest < 2:
            return
        lane = min(lanes, key=lambda lane: lane.backlog)
        registry = cast(Removal, lane.removal)  # the registry: a local lane knows it so too
        log.info("lane of %s moves from %s to even the replicas' lanes out", lane.subscriber.id,
                 lane.holder)  # fmt: skip
        self._handing = HandOver(
            lane,
            lambda: self.open_lane(lane.subscriber, registry),
            self._capacity,
            self._publication,
            registry,
        )

    def _gone(self, shipper: Shipper) -> None:
        log.warning("replica %s is gone: its lanes move", shipper.name)
        self._shippers.pop(shipper.instance, None)
        shipper.stop()
        for lane in [lane for lane in self._lanes.values() if lane.shipper is shipper]:
            self._move(lane, avoid=shipper.instance)
        try:
            self._wire.forget(shipper.instance)
        except valkey.ValkeyError as exc:
            log.warning("could not drop %s's work: %s", shipper.name, exc)

    def _move(self, lane: RemoteLane, avoid: str | None) -> None:
        self._lanes.pop(lane.assignment, None)
        if lane.closed:
            return
        if lane.shipper.instance != avoid:
            lane.shipper.add(["close", lane.assignment])
        if isinstance(lane.successor, HandOver):  # on its way already: the rest goes too
            lane.successor.adopt(lane.give_up())
            return
        moved = self.open_lane(lane.subscriber, lane.removal, avoid=avoid)
        log.info("lane of %s moves from %s to %s", lane.subscriber.id, lane.holder, moved.holder)
        lane.move_to(moved)
        lane.removal.replace(lane.subscriber.id, moved, instead_of=lane)

    def stop(self) -> None:
        gevent.killall(self._greenlets)
        for shipper in self._shippers.values():
            shipper.stop()
