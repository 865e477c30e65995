"""Logs as JSON lines on stdout, the same in every service and in gunicorn's own logs: each
line has the time, level, logger, message, the service and the replica (its hostname), and
the message `id` and `seq` where a record is about one (pass them as `extra`)."""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

FORMAT = "{asctime}{levelname}{name}{message}"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_formatter(service: str) -> JsonFormatter:
    return JsonFormatter(
        FORMAT,
        style="{",
        rename_fields=RENAMED,
        static_fields={"service": service, "replica": socket.gethostname()},
    )


def configure_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout from the root logger, unless gunicorn's logconfig did it."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter(service))
    root.addHandler(handler)


def gunicorn_logconfig(service: str, level: str) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its error and access logs as the same JSON lines."""
    formatter = {
        "()": "groker_common.logs.json_formatter",
        "service": service,
    }
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"json": handler},
        "root": {"level": level.upper(), "handlers": ["json"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["json"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["json"], "propagate": False},
        },
    }
