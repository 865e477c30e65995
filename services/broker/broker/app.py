"""The broker's app factory: gunicorn runs `broker.app:create_app()` in its one worker."""

from __future__ import annotations

from flask import Flask

from broker.access import install_access_control
from broker.dashboard import dashboard
from broker.openapi import spec
from broker.routes import api
from broker.settings import BrokerSettings
from broker.wiring import build_broker
from groker_common.logs import configure_logging
from groker_common.metrics import metrics_blueprint
from groker_common.web import health_blueprint, install_json_errors


def create_app(settings: BrokerSettings | None = None) -> Flask:
    settings = settings or BrokerSettings()
    configure_logging("broker", settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    broker = build_broker(settings)
    app.extensions["groker"] = broker
    install_json_errors(app)
    install_access_control(app, settings)
    app.register_blueprint(health_blueprint(lambda: broker.ready and not broker.draining))
    app.register_blueprint(api)
    app.register_blueprint(dashboard)
    app.register_blueprint(spec)
    app.register_blueprint(metrics_blueprint(broker.metrics.registry))
    app.extensions["groker_on_stop"] = broker.drain
    app.extensions["groker_on_exit"] = broker.stop
    broker.start()
    return app
