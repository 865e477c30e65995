"""The broker's app factory: gunicorn runs `broker.app:create_app()` in its one worker."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import cast

from flask import Flask, Response, request

from broker.acceptor import Acceptor
from broker.access import install_access_control
from broker.cloudevents import CloudEventsFormat
from broker.core import Broker
from broker.dashboard import EVENT_INTERVAL, SNAPSHOT_PATH, dashboard
from broker.delegation import Delegation
from broker.delivery import Courier
from broker.forward import Forwarder
from broker.guard import CallbackGuard
from broker.inbox import Inbox
from broker.intake import Announcer, Intake
from broker.lane_host import LaneHost
from broker.lane_wire import LaneWire
from broker.lanes import Lane
from broker.metrics import BrokerMetrics
from broker.openapi import spec
from broker.publication import Publication
from broker.replica import Replica
from broker.routes import api
from broker.settings import BrokerSettings
from broker.storage.lease import OwnerLease
from broker.storage.valkey import ValkeyStore
from broker.storage.valkey_client import ValkeyTarget
from broker.wiring import build_broker
from groker_common.http import HttpPool
from groker_common.logs import configure_logging
from groker_common.metrics import metrics_blueprint
from groker_common.web import health_blueprint, install_json_errors

log = logging.getLogger(__name__)

# Stores that replicas share: each replica runs the broker only while it owns the queue.
SHARED_STORES = {"valkey"}
LOST_THE_QUEUE = 75  # EX_TEMPFAIL


def _lost_the_queue() -> None:
    # Another replica owns the queue now: stop delivering at once, with no drain. gunicorn
    # starts a fresh worker, which waits as a standby (any exit code but gunicorn's own 3
    # and 4, which would stop gunicorn altogether).
    log.critical("exiting: this replica no longer owns the queue, or cannot tell what it holds")
    logging.shutdown()
    os._exit(LOST_THE_QUEUE)


# What a standby relays to the owner (forward.py): the API but publishing, the dashboard.
FORWARDED = {
    "api.get_message",
    "api.subscribe",
    "api.list_subscriptions",
    "api.get_subscription",
    "api.unsubscribe",
    "api.stats",
    "dashboard.page",
    "dashboard.snapshot",
}


def advertised_url(settings: BrokerSettings) -> str:
    """Where the other replicas reach this one: GROKER_ADVERTISE_URL, or this host's address
    and the port gunicorn listens on."""
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    address = socket.gethostbyname(socket.gethostname())
    return f"http://{address}:{os.environ.get('PORT', '8000')}"


class Cluster:
    """A replica's parts for sharing one queue with others over Valkey: the ownership lease,
    the inbox's two ends (acceptor.py for a standby, intake.py for the owner), the forwarder
    of a standby's other requests, and both ends of the lanes the owner gives the others
    (delegation.py for the owner, lane_host.py on every replica)."""

    def __init__(self, settings: BrokerSettings, metrics: BrokerMetrics) -> None:
        self._settings = settings
        target = self._target = ValkeyTarget.from_settings(settings)
        self.lease = OwnerLease(
            target,
            settings.valkey_prefix,
            settings.lease_seconds,
            name=settings.replica_name,
            url=advertised_url(settings),
        )
        self.inbox = Inbox(target, settings.valkey_prefix)
        self.acceptor = Acceptor(settings, self.inbox, CallbackGuard(settings.allowed_networks))
        self.announcer = Announcer(self.inbox)
        self.forwarder = Forwarder(self.lease, HttpPool(), settings.sync_timeout + 5)
        courier = Courier(
            HttpPool(),
            CallbackGuard(settings.allowed_networks),
            settings.delivery_attempts,
            settings.delivery_timeout,
            metrics.delivery_latency,
            CloudEventsFormat(settings.cloudevents_source),
        )
        self.host = LaneHost(
            LaneWire(target, settings.valkey_prefix), self.lease, courier, settings.lane_capacity
        )
        self.host.start()
        self.intake: Intake | None = None
        self.delegation: Delegation | None = None

    def delegate(
        self, token: str
    ) -> Callable[[Callable[..., Lane], Publication], Callable[..., Lane]]:
        """How the broker owning with `token` opens its lanes: here or on other replicas."""

        def open_lanes(local: Callable[..., Lane], publication: Publication) -> Callable[..., Lane]:
            self.delegation = Delegation(
                LaneWire(self._target, self._settings.valkey_prefix),
                self.lease,
                token,
                local,
                publication,
                self._settings.lane_capacity,
            )
            return self.delegation.open_lane  # type: ignore[return-value]

        return open_lanes

    def own(self, broker: Broker) -> None:
        """This replica owns the queue now: take in what the standbys accept. The lanes it
        held for the previous owner go: it delivers again what they had not."""
        self.host.clear()
        self.intake = Intake(broker, self.inbox, cast(ValkeyStore, broker.store))
        self.intake.start()

    def stop_intake(self) -> None:
        if self.intake is not None:
            self.intake.stop()

    def stop(self) -> None:
        """After the broker's stop: until then its lanes here and elsewhere may still be
        delivering what it handed them, and their outcomes must be heard."""
        if self.delegation is not None:
            self.delegation.stop()
        self.host.stop()
        self.announcer.stop()


def create_app(settings: BrokerSettings | None = None) -> Flask:
    settings = settings or BrokerSettings()
    configure_logging("broker", settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = BrokerMetrics()
    shared = settings.store in SHARED_STORES
    cluster = Cluster(settings, metrics) if shared else None

    def activate(broker: Broker) -> None:
        app.extensions["groker"] = broker
        if cluster is not None:
            cluster.own(broker)

    replica = Replica(
        lambda token: build_broker(
            settings,
            metrics=metrics,
            owner_token=token,
            announce=None if cluster is None else cluster.announcer,
            delegate=None if cluster is None or token is None else cluster.delegate(token),
        ),
        None if cluster is None else cluster.lease,
        on_active=activate,
        on_lost=_lost_the_queue,
        acceptor=None if cluster is None else cluster.acceptor,
        name=settings.replica_name,
    )
    app.extensions["groker_replica"] = replica
    install_json_errors(app)
    install_access_control(app, settings)
    if cluster is not None:

        @app.before_request
        def _to_the_owner() -> Response | None:
            # A standby takes publishes itself (through the inbox); the rest is the owner's.
            if replica.owning:
                return None
            if request.endpoint == "dashboard.events":
                return cluster.forwarder.events(request, SNAPSHOT_PATH, EVENT_INTERVAL)
            if request.endpoint not in FORWARDED:
                return None
            return cluster.forwarder.forward(request)

    app.register_blueprint(health_blueprint(lambda: replica.ready))
    app.register_blueprint(api)
    app.register_blueprint(dashboard)
    app.register_blueprint(spec)
    app.register_blueprint(metrics_blueprint(metrics.registry))
    app.extensions["groker_on_stop"] = replica.drain

    def stop() -> None:
        if cluster is not None:
            cluster.stop_intake()
        replica.stop()
        if cluster is not None:
            cluster.stop()

    app.extensions["groker_on_exit"] = stop

    @app.after_request
    def _name_the_replica(response: Response) -> Response:
        response.headers["X-Groker-Replica"] = settings.replica_name
        return response

    replica.start()
    return app
