# gunicorn settings for the broker. Every knob comes from the environment; imports stay
# minimal so gevent patches the standard library before anything else loads it.
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# Exactly one worker: that process owns the queue, the subscriber registry and the lanes.
# More workers would mean several independent queues and broken ordering.
workers = 1
worker_class = "gevent"
# Each waiting sync publisher holds a connection, so leave plenty.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "2000"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "75"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
errorlog = "-"
loglevel = os.environ.get("GROKER_LOG_LEVEL", "info").lower()
control_socket_disable = True  # gunicorn 25.1+ would open a socket under $HOME


def worker_exit(server, worker):
    broker = worker.wsgi.extensions.get("groker") if hasattr(worker, "wsgi") else None
    if broker is not None:
        broker.stop()
