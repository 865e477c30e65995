"""Where accepted messages and subscriptions are kept: the `Store` interface (base.py) and
its backends, one module each. GROKER_STORE names the backend; adding one is a module here
and a line in BACKENDS."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.storage.base import Store, StoreError
from broker.storage.memory import MemoryStore
from broker.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from broker.settings import BrokerSettings

__all__ = ["BACKENDS", "Store", "StoreError", "open_store"]

BACKENDS = {
    "sqlite": SqliteStore.from_settings,
    "memory": MemoryStore.from_settings,
}


def open_store(
    settings: BrokerSettings, observe_write: Callable[[float], None] | None = None
) -> Store:
    """Open the backend the settings name; `observe_write` times each durable write."""
    return BACKENDS[settings.store](settings, observe_write=observe_write)
