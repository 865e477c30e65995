"""Who is subscribed right now, each with the lane that delivers to it."""

from __future__ import annotations

import logging
from collections.abc import Callable

from broker.lanes import BaseLane, Lane
from broker.model import Counters, Subscriber
from broker.storage.base import SubscriptionStore

log = logging.getLogger(__name__)


class SubscriberRegistry:
    """The subscribers by id and by callback, each with its open lane; keeps the
    subscription store in step."""

    def __init__(
        self,
        store: SubscriptionStore,
        counters: Counters,
        open_lane: Callable[..., Lane],
    ) -> None:
        # open_lane(subscriber=, removal=) makes the lane; the rest of its parts are bound.
        self._store = store
        self._counters = counters
        self._open_lane = open_lane
        self._lanes: dict[str, Lane] = {}
        self._by_callback: dict[str, str] = {}

    def subscribe(self, candidate: Subscriber) -> tuple[Subscriber, bool]:
        """Register a new subscriber; one whose callback is registered already is the same
        subscription (the registered one, False)."""
        existing = self.find(candidate.callback)
        if existing is not None:
            return existing, False
        self._store.save_subscription(candidate)
        self._add(candidate)
        log.info("subscribed %s %s", candidate.id, candidate.callback)
        return candidate, True

    def restore(self) -> None:
        """Take back the subscriptions a restarted broker had."""
        for subscriber in self._store.subscriptions():
            self._add(subscriber)

    def _add(self, subscriber: Subscriber) -> None:
        self._lanes[subscriber.id] = self._open_lane(subscriber=subscriber, removal=self)
        self._by_callback[subscriber.callback] = subscriber.id

    def unsubscribe(self, subscriber_id: str, reason: str | None = None) -> bool:
        """Remove a subscriber: at its own request (no reason) or because it failed."""
        lane = self._lanes.pop(subscriber_id, None)
        if lane is None:
            return False
        self._by_callback.pop(lane.subscriber.callback, None)
        self._store.delete_subscription(subscriber_id)
        if reason is None:
            self._counters.unsubscribed += 1
            log.info("unsubscribed %s %s", subscriber_id, lane.subscriber.callback)
        else:
            self._counters.removed += 1
            log.warning("removed %s %s: %s", subscriber_id, lane.subscriber.callback, reason)
        lane.close()
        return True

    def replace(self, subscriber_id: str, lane: BaseLane, instead_of: BaseLane) -> None:
        """Deliver to a subscriber through `lane` from now on instead of `instead_of`
        (delegation.py and handover.py move lanes); nothing if that is not its lane now
        (it is no longer subscribed, or its lane moved since)."""
        if self._lanes.get(subscriber_id) is instead_of:
            self._lanes[subscriber_id] = lane  # type: ignore[assignment]

    def find(self, callback: str) -> Subscriber | None:
        subscriber_id = self._by_callback.get(callback)
        return self._lanes[subscriber_id].subscriber if subscriber_id else None

    def get(self, subscriber_id: str) -> Subscriber | None:
        lane = self._lanes.get(subscriber_id)
        return lane.subscriber if lane else None

    def lanes(self) -> list[Lane]:
        return list(self._lanes.values())

    def __len__(self) -> int:
        return len(self._lanes)

    def close(self) -> None:
        for lane in self.lanes():
            lane.close()
        self._lanes.clear()
        self._by_callback.clear()
