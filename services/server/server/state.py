"""What the load generator's routes need: its settings, the publishing loop and its
statistics."""

from __future__ import annotations

from dataclasses import dataclass

from server.publisher import Publisher
from server.settings import ServerSettings
from server.stats import PublishStats


@dataclass(frozen=True)
class ServerState:
    settings: ServerSettings
    publisher: Publisher
    stats: PublishStats
