"""The composition root: the one place that makes a broker's parts and connects them.
`create_app` and the tests both build their brokers here."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from broker.cloudevents import CloudEventsFormat
from broker.core import Broker, Parts
from broker.delivery import Courier
from broker.dispatcher import Dispatcher
from broker.guard import CallbackGuard
from broker.lanes import Lane
from broker.metrics import BrokerMetrics
from broker.model import Counters, Message
from broker.publication import Publication
from broker.registry import SubscriberRegistry
from broker.replies import CallbackNotifier
from broker.settings import BrokerSettings
from broker.storage.backends import Store, open_store
from groker_common.http import HttpPool


def build_broker(
    settings: BrokerSettings | None = None,
    store: Store | None = None,
    http: HttpPool | None = None,
    metrics: BrokerMetrics | None = None,
    owner_token: str | None = None,
    announce: Callable[[Message], None] | None = None,
    delegate: Callable[[Callable[..., Lane], Publication], Callable[..., Lane]] | None = None,
) -> Broker:
    """A broker ready to `start()`, over the store the settings name (or `store`); over a
    shared store, writing only while `owner_token` owns it, and telling `announce` of every
    publication (intake.Announcer), and opening lanes through `delegate` (delegation.py:
    given the local lanes' maker and the publication, the maker to use)."""
    settings = settings or BrokerSettings()
    counters = Counters()
    metrics = metrics or BrokerMetrics()
    store = store or open_store(settings, metrics.store_write.observe, owner_token)
    http = http or HttpPool()
    guard = CallbackGuard(settings.allowed_networks)
    notifier = CallbackNotifier(
        http,
        guard,
        counters,
        attempts=settings.notify_attempts,
        timeout=settings.notify_timeout,
        secret=settings.callback_secret,
        store=store,
    )
    courier = Courier(
        http,
        guard,
        settings.delivery_attempts,
        settings.delivery_timeout,
        metrics.delivery_latency,
        CloudEventsFormat(settings.cloudevents_source),
    )
    publication = Publication(store, counters, metrics, announce)
    open_lane = partial(
        Lane, courier=courier, capacity=settings.lane_capacity, publication=publication
    )
    if delegate is not None:
        open_lane = delegate(open_lane, publication)
    registry = SubscriberRegistry(store, counters, open_lane)
    dispatcher = Dispatcher(store, registry, settings.flow_backlog)
    broker = Broker(
        settings,
        Parts(store, registry, dispatcher, notifier, guard, http, counters, metrics),
    )
    metrics.watch(broker.stats)
    return broker
