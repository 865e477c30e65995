"""The subscriber's app factory: gunicorn runs `client.app:create_app()`."""

from __future__ import annotations

from flask import Flask

from client.inbox import Inbox
from client.routes import api, injected_fault
from client.settings import ClientSettings
from client.state import ClientState
from client.subscription import Subscription
from groker_common.http import HttpPool
from groker_common.logs import configure_logging
from groker_common.metrics import metrics_blueprint
from groker_common.web import health_blueprint, install_json_errors, install_state


def create_app(settings: ClientSettings | None = None, subscribe: bool = True) -> Flask:
    settings = settings or ClientSettings()
    configure_logging("client", settings.log_level)
    app = Flask(__name__)
    subscription = Subscription(
        settings.broker_url,
        settings.own_callback_url(),
        settings.resubscribe_interval,
        HttpPool(),
        token=settings.manage_token,
        max_batch=settings.max_batch,
        format=settings.format,
        cloudevents_mode=settings.cloudevents_mode,
    )
    # Deliveries are checked against the secret the broker's answer to our subscribe gives.
    secrets = subscription if settings.verify_signatures else None
    inbox = Inbox(settings.keep_recent, secrets, before_taking=injected_fault)
    install_state(
        app, ClientState(settings, subscription, inbox), subscription.stop, subscription.stop
    )
    install_json_errors(app)
    app.register_blueprint(health_blueprint(lambda: subscription.id is not None))
    app.register_blueprint(api)
    app.register_blueprint(metrics_blueprint(inbox.registry))
    if subscribe:
        subscription.start()
    return app
