"""Flask pieces every groker service uses: JSON errors and the health routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException


def error(status: int, message: str, detail: Any = None, **headers: str):
    """The one error shape of every groker API: {"error": ..., "detail": ...}."""
    response = jsonify({"error": message, "detail": detail})
    response.status_code = status
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def install_json_errors(app: Flask) -> None:
    """Answer werkzeug's errors (404, 405, 413, ...) as JSON instead of HTML."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        response = error(exc.code or 500, (exc.name or "error").lower(), exc.description)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response


def health_blueprint(is_ready: Callable[[], bool]) -> Blueprint:
    """/healthz: the process answers. /readyz: it can do its work now (503 while starting
    or draining). Compose and Kubernetes probe these same two paths."""
    health = Blueprint("health", __name__)

    @health.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @health.get("/readyz")
    def readyz():
        if is_ready():
            return {"status": "ready"}
        return error(503, "not ready", "starting or draining")

    return health


def install_state(
    app: Flask, state: Any, on_stop: Callable[[], None], on_exit: Callable[[], None]
) -> None:
    """Every groker app keeps what its routes need in one object, under one key, with the
    two hooks gunicorn calls (gunicorn_defaults): on_stop at SIGTERM, on_exit as the worker
    leaves."""
    app.extensions["groker"] = state
    app.extensions["groker_on_stop"] = on_stop
    app.extensions["groker_on_exit"] = on_exit


def app_state(app: Flask | None = None) -> Any:
    """The object `install_state` kept for this app (the current one by default)."""
    return (app or current_app).extensions["groker"]
