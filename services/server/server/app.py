"""The load generator's app factory: gunicorn runs `server.app:create_app()`."""

from __future__ import annotations

from flask import Flask

from groker_common.http import HttpPool
from groker_common.logs import configure_logging
from groker_common.metrics import metrics_blueprint
from groker_common.web import health_blueprint, install_json_errors, install_state
from server.publisher import Publisher
from server.routes import api
from server.settings import ServerSettings
from server.state import ServerState
from server.stats import PublishStats


def create_app(settings: ServerSettings | None = None) -> Flask:
    settings = settings or ServerSettings()
    configure_logging("server", settings.log_level)
    app = Flask(__name__)
    stats = PublishStats()
    # A connection for every publish in flight: a sync publish holds its connection while
    # it waits, and must not hold up the publishes due after it (opened only as needed).
    publisher = Publisher(settings, stats, HttpPool(concurrency=settings.max_in_flight))
    install_state(app, ServerState(settings, publisher, stats), publisher.stop, publisher.close)
    install_json_errors(app)
    app.register_blueprint(health_blueprint(lambda: True))
    app.register_blueprint(api)
    app.register_blueprint(metrics_blueprint(stats.registry))
    publisher.start()
    return app
