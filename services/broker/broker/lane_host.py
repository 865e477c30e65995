"""A replica's share of the deliveries (GROKER_STORE=valkey): the lanes the owner of the
queue gave it (delegation.py), each an ordinary lane (lanes.py) whose outcomes go back to
the owner (lane_wire.py) instead of into a publication here.

Its lanes are the owner's, and only while this replica is known to be here: every replica
says so each third of a lease (storage/lease.py), and the owner moves the lanes of one
silent for a lease. So a replica that went silent that long (paused, cut off) drops every
lane it held, undelivered (`x`), and delivers nothing more on their account; as it does when
another replica owns the queue (that one delivers again what was not published).

One window is left: work read in the moment between the owner finding this replica silent
and its dropping this replica's work stream (one step of one greenlet) may open a lane the
owner has moved already; its subscriber then gets repeats, and its outcomes are ignored."""

from __future__ import annotations

import logging
import time

import gevent
import valkey

from broker.coalescing import Coalescer
from broker.delivery import Courier
from broker.lane_wire import LaneWire, Op, message_of, subscriber_of
from broker.lanes import Lane
from broker.model import Message
from broker.storage.lease import OwnerLease

log = logging.getLogger(__name__)

BLOCK_MS = 1000
# Seconds between looks at this replica's presence and at who owns the queue.
WATCH = 0.5
# A delivery starts only if the owner of this replica's lanes was seen to own the queue
# this recently: a new owner waits longer than that before it delivers (replica.py), so the
# old one's lanes here start nothing after the new one's lanes have begun.
CONFIRM = 0.1


class Report:
    """Where one hosted lane reports, in the owner's stead: its publication (`record`) and
    its registry (`unsubscribe`)."""

    def __init__(self, host: LaneHost, assignment: str) -> None:
        self._host = host
        self._assignment = assignment

    def record(self, message: Message, subscriber_id: str, delivered: bool) -> None:
        self._host.report(["d", self._assignment, message.seq, delivered])

    def unsubscribe(self, subscriber_id: str, reason: str | None = None) -> bool:
        self._host.report(["r", self._assignment, reason or "removed"])
        self._host.drop(self._assignment)
        return True


class LaneHost:
    def __init__(self, wire: LaneWire, lease: OwnerLease, courier: Courier, capacity: int) -> None:
        self._wire = wire
        self._lease = lease
        courier.fence(self._may_deliver)
        self._courier = courier
        self._capacity = capacity
        self._lanes: dict[str, Lane] = {}  # by assignment
        self._owner: str | None = None  # whose lanes they are
        self._lapses = lease.lapses
        self._confirmed_at = 0.0
        self._outcomes: Coalescer[Op] = Coalescer(self._report_all)
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        self._greenlets = [
            gevent.spawn(self._read_forever),
            gevent.spawn(self._watch_forever),
        ]

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def _present(self) -> bool:
        return self._lease.present() and self._lease.lapses == self._lapses

    def _may_deliver(self) -> bool:
        """Whether a hosted lane may make a delivery now: this replica is present, and the
        owner it delivers for owned the queue within CONFIRM."""
        if not self._present():
            return False
        now = time.monotonic()
        if now - self._confirmed_at < CONFIRM:
            return True
        try:
            if self._lease.owner_token() != self._owner:
                return False
        except valkey.ValkeyError:
            return False
        self._confirmed_at = now
        return True

    def report(self, op: Op) -> None:
        self._outcomes.add(op)

    def drop(self, assignment: str) -> None:
        lane = self._lanes.pop(assignment, None)
        if lane is not None:
            lane.abandon()  # what it held is the owner's to count

    def clear(self, undelivered: bool = False) -> None:
        """Drop every lane; with `undelivered`, tell the owner so (it moves them)."""
        dropped = list(self._lanes)
        for assignment in dropped:
            self._lanes.pop(assignment).abandon()
        if undelivered and dropped:
            for assignment in dropped:
                self.report(["x", assignment])

    def _read_forever(self) -> None:
        instance = self._lease.token
        after = "0-0"
        while True:
            try:
                entries = self._wire.work(instance, after, BLOCK_MS)
                self._notice_lapse()
                for entry_id, owner, ops in entries:
                    if not self._present():
                        self._give_back(owner, ops)
                    elif self._for(owner):
                        for op in ops:
                            self._apply(op)
                    after = entry_id
                if entries:
                    self._wire.done_with(instance, after)
            except valkey.ValkeyError as exc:
                log.warning("cannot read this replica's lanes: %s", exc)
                gevent.sleep(0.5)

    def _give_back(self, owner: str, ops: list[Op]) -> None:
        """Work this replica cannot take now (silent too long, as far as the owner can
        tell): the owner moves those lanes, to this one again if it is back by then."""
        assignments = {op[1] for op in ops if op[0] == "open"}
        assignments.update(a for op in ops if op[0] == "msg" for a in op[-1])
        if assignments:
            self._wire.report(owner, [["x", assignment] for assignment in sorted(assignments)])

    def _notice_lapse(self) -> None:
        """Back after a silence past the lease: every lane held from before goes back."""
        if self._lease.lapses != self._lapses and self._lease.present():
            log.warning("this replica was silent past its lease: it gives its lanes back")
            self.clear(undelivered=True)
            self._lapses = self._lease.lapses

    def _for(self, owner: str) -> bool:
        """Whether work from `owner` is to be done: it is the owner of the queue."""
        if owner == self._owner:
            return True
        if self._lease.owner_token() != owner:
            return False
        self.clear()  # a previous owner's: the new one delivers again what they held
        self._owner = owner
        return True

    def _apply(self, op: Op) -> None:
        kind = op[0]
        if kind == "msg":
            message, assignments = message_of(op)
            for assignment in assignments:
                lane = self._lanes.get(assignment)
                if lane is not None:
                    lane.put(message)
        elif kind == "open":
            report = Report(self, op[1])
            self._lanes[op[1]] = Lane(
                subscriber_of(op),
                self._courier,
                self._capacity,
                report,
                report,  # type: ignore[arg-type]
            )
        elif kind == "close":
            self.drop(op[1])

    def _report_all(self, ops: list[Op]) -> None:
        if self._owner is None:
            return
        try:
            self._wire.report(self._owner, ops)
        except valkey.ValkeyError as exc:
            log.warning("could not report %d outcomes, again shortly: %s", len(ops), exc)
            self._outcomes.again(ops, 0.2)

    def _watch_forever(self) -> None:
        while True:
            gevent.sleep(WATCH)
            self._notice_lapse()
            for assignment, lane in list(self._lanes.items()):
                if lane.ended:  # refused a delivery (fence): the owner moves it, if still one
                    del self._lanes[assignment]
                    self.report(["x", assignment])
            if not self._lanes:
                continue
            try:
                owner = self._lease.owner_token()
            except valkey.ValkeyError:
                continue
            if owner != self._owner:
                log.info("another replica owns the queue: this one drops its lanes")
                self.clear()
                self._owner = None

    def stop(self) -> None:
        """This replica stops: its lanes go back to the owner, told at once."""
        gevent.killall(self._greenlets)
        self._outcomes.stop()
        self.clear(undelivered=True)
        outcomes = self._outcomes.take()
        if outcomes and self._owner is not None:
            try:
                self._wire.report(self._owner, outcomes)
            except valkey.ValkeyError as exc:
                log.warning("could not give the lanes back (the owner moves them): %s", exc)
        self._wire.close()
