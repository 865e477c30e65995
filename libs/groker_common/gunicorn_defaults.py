"""gunicorn knobs every groker service shares, each from the environment.

A service's gunicorn.conf.py star-imports this and sets its own `bind`. Imports stay
minimal (only `os`) so gevent patches the standard library before anything else loads it.
There is no preload: with gevent, the app must be imported after patching, in the worker."""

import os

worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "2000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# Matched by stop_grace_period in docker-compose.yml and terminationGracePeriodSeconds in k8s/.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GROKER_LOG_LEVEL", "info").lower()
# gunicorn 25.1+ opens a control socket under $HOME, which a non-root user may not have.
control_socket_disable = True


def bind_on(default_port: int) -> str:
    return f"0.0.0.0:{os.environ.get('PORT', default_port)}"


def worker_exit(server, worker):
    """Let the app finish its own work (stop the queue, unsubscribe) as the worker exits."""
    app = getattr(worker, "wsgi", None)
    on_exit = getattr(app, "extensions", {}).get("groker_on_exit")
    if on_exit is not None:
        on_exit()
