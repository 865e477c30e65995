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
# Long enough for the broker to reuse connections between messages, short enough that an
# idle kept-alive connection does not hold a stopping worker for long.
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
logger_class = "groker_common.gunicorn_logger.QuietAccessLogger"
errorlog = "-"
loglevel = os.environ.get("GROKER_LOG_LEVEL", "info").lower()
# gunicorn 25.1+ opens a control socket under $HOME, which a non-root user may not have.
control_socket_disable = True


def bind_on(default_port: int) -> str:
    return f"0.0.0.0:{os.environ.get('PORT', default_port)}"


def json_logs(service: str) -> dict:
    """gunicorn's own logs as the same JSON lines the app writes (groker_common.logs)."""
    from groker_common.logs import gunicorn_logconfig

    return gunicorn_logconfig(service, loglevel)


def _app_hook(worker, name: str):
    return getattr(getattr(worker, "wsgi", None), "extensions", {}).get(name)


def post_worker_init(worker):
    """Tell the app as soon as SIGTERM arrives (`groker_on_stop`: stop publishing,
    unsubscribe, turn /readyz to 503), not only once the graceful period is over."""
    import signal

    import gevent

    handle_exit = worker.handle_exit

    def on_sigterm(sig, frame):
        handle_exit(sig, frame)
        on_stop = _app_hook(worker, "groker_on_stop")
        if on_stop is not None:
            gevent.spawn(on_stop)  # a signal handler must not block

    signal.signal(signal.SIGTERM, on_sigterm)


def worker_exit(server, worker):
    """Let the app release what it holds (`groker_on_exit`) as the worker exits."""
    on_exit = _app_hook(worker, "groker_on_exit")
    if on_exit is not None:
        on_exit()
