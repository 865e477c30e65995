"""The storage backends by the name GROKER_STORE gives them. A new backend is a module in
this package implementing `base.Store`, and a line in BACKENDS."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.storage.base import Store
from broker.storage.memory import MemoryStore
from broker.storage.sqlite import SqliteStore
from broker.storage.valkey import ValkeyStore

if TYPE_CHECKING:
    from broker.settings import BrokerSettings


BACKENDS = {
    "sqlite": SqliteStore.from_settings,
    "memory": MemoryStore.from_settings,
    "valkey": ValkeyStore.from_settings,
}


def open_store(
    settings: BrokerSettings,
    observe_write: Callable[[float], None] | None = None,
    owner_token: str | None = None,
) -> Store:
    """Open the backend the settings name; `observe_write` times each durable write, and
    a shared store writes only while `owner_token` owns it (replica.py)."""
    if settings.store not in BACKENDS:
        raise ValueError(f"GROKER_STORE={settings.store!r}: not one of {', '.join(BACKENDS)}")
    return BACKENDS[settings.store](settings, observe_write=observe_write, owner_token=owner_token)
