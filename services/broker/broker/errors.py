"""Every exception the broker raises, in one place. The HTTP layer (routes.py) turns the
ones a request can meet into answers; lanes.py catches the delivery ones.

    BrokerError
    ├── Unavailable              cannot take it now; try again later (503 + Retry-After)
    │   ├── QueueFull            as many unpublished messages (or bytes) as allowed
    │   ├── Draining             shutting down
    │   ├── StoreError           a write could not be made durable
    │   └── Standby              another replica owns the queue (this one waits to take over)
    ├── RefusedDestination       a callback points where the broker will not call (403)
    ├── ChallengeFailed          a new callback did not echo the subscription challenge (422)
    ├── KeyReused                an idempotency key sent again with another request (422)
    ├── NotSequenced             a publish in the cluster's inbox that no owner took in time
    │                            (504; it is published once one does)
    ├── KeyInUse                 an idempotency key whose first request is still being
    │                            written (409 + Retry-After)
    └── DeliveryFailed           one delivery to one subscriber (never reaches a client)
        ├── Unreachable          refused, reset, timed out or 5xx: worth another attempt
        └── Gone                 410, or its address is now refused: remove it at once
"""

from __future__ import annotations


class BrokerError(Exception):
    """Anything the broker raises on purpose."""


class Unavailable(BrokerError):
    """The broker cannot take this now; the same request may succeed later."""

    retry_after = 5  # seconds to suggest to the caller


class QueueFull(Unavailable):
    """The queue holds as many unpublished messages (or bytes) as it may; try later."""

    retry_after = 1


class Draining(Unavailable):
    """The broker is shutting down and accepts nothing new."""


class StoreError(Unavailable):
    """A write could not be made durable."""


class Standby(Unavailable):
    """This replica is a standby: another one owns the queue (the load balancer sends
    requests to the owner; a standby takes over when the owner dies)."""

    retry_after = 1


class RefusedDestination(BrokerError):
    """The callback resolves to an address the broker will not call."""


class ChallengeFailed(BrokerError):
    """The callback did not echo the subscription challenge."""


class KeyReused(BrokerError):
    """An idempotency key came again with a different request (body, mode, headers or
    callback): it stays bound to its first message."""


class KeyInUse(BrokerError):
    """The first request with this idempotency key is still being made durable; asking
    again in a moment gets its answer."""

    retry_after = 1


class NotSequenced(BrokerError):
    """A publish a standby put in the cluster's inbox (inbox.py) that no replica owning the
    queue took within the sync timeout: it is durable there, and gets its seq once one does."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"not sequenced yet: {', '.join(ids)}")
        self.ids = ids


class DeliveryFailed(BrokerError):
    """One delivery to one subscriber failed."""


class Unreachable(DeliveryFailed):
    """Connection refused or reset, timeout, or 5xx: worth another quick attempt."""


class Gone(DeliveryFailed):
    """410 Gone (the subscriber asked to be removed), or its address is now refused."""
