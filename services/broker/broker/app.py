"""The broker's app factory: gunicorn runs `broker.app:create_app()` in its one worker."""

from __future__ import annotations

import logging
import os

from flask import Flask, Response

from broker.access import install_access_control
from broker.core import REPLICA, Broker
from broker.dashboard import dashboard
from broker.metrics import BrokerMetrics
from broker.openapi import spec
from broker.replica import Replica
from broker.routes import api
from broker.settings import BrokerSettings
from broker.storage.lease import OwnerLease
from broker.storage.valkey_client import ValkeyTarget
from broker.wiring import build_broker
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


def create_app(settings: BrokerSettings | None = None) -> Flask:
    settings = settings or BrokerSettings()
    configure_logging("broker", settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    metrics = BrokerMetrics()
    lease = (
        OwnerLease(
            ValkeyTarget.from_settings(settings), settings.valkey_prefix, settings.lease_seconds
        )
        if settings.store in SHARED_STORES
        else None
    )

    def activate(broker: Broker) -> None:
        app.extensions["groker"] = broker

    replica = Replica(
        lambda token: build_broker(settings, metrics=metrics, owner_token=token),
        lease,
        on_active=activate,
        on_lost=_lost_the_queue,
    )
    app.extensions["groker_replica"] = replica
    install_json_errors(app)
    install_access_control(app, settings)
    app.register_blueprint(health_blueprint(lambda: replica.ready))
    app.register_blueprint(api)
    app.register_blueprint(dashboard)
    app.register_blueprint(spec)
    app.register_blueprint(metrics_blueprint(metrics.registry))
    app.extensions["groker_on_stop"] = replica.drain
    app.extensions["groker_on_exit"] = replica.stop

    @app.after_request
    def _name_the_replica(response: Response) -> Response:
        response.headers["X-Groker-Replica"] = REPLICA
        return response

    replica.start()
    return app
