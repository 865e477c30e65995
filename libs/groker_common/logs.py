"""Logging set up the same way in every service: one line per record, to stdout."""

from __future__ import annotations

import logging
import sys


def configure_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    if getattr(root, "_groker_configured", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    root._groker_configured = True  # type: ignore[attr-defined]
