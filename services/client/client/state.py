"""What the subscriber's routes need: its settings, its subscription, what it received,
and the fault it was told to fake (PUT /fault)."""

from __future__ import annotations

from dataclasses import dataclass, field

from client.inbox import Inbox
from client.settings import ClientSettings
from client.subscription import Subscription


@dataclass
class Fault:
    """How this replica misbehaves when told to: answer deliveries with `status` after
    `delay` seconds. Only with GROKER_FAULT_INJECTION=1."""

    status: int | None = None
    delay: float = 0.0


@dataclass
class ClientState:
    settings: ClientSettings
    subscription: Subscription
    inbox: Inbox
    fault: Fault = field(default_factory=Fault)
