"""Who owns the queue when broker replicas share one Valkey: an ownership lease.

`{prefix}:owner` holds the owner's token with a time to live (SET NX PX); the owner renews
it every third of the lease and every write of its store is fenced by it (see valkey.py's
WRITE script), so a replica that lost the lease (paused, cut off) can no longer change the
queue once another one holds it. The others wait as standbys and take over when the key
expires, at most one lease after the owner died, or at once when it hands over (release)."""

from __future__ import annotations

import logging
import socket
import time
import uuid

import gevent
import valkey

from broker.storage.valkey_client import ValkeyTarget

log = logging.getLogger(__name__)

# Extend or drop the key only while it is still ours.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class OwnerLease:
    def __init__(self, target: ValkeyTarget | str, prefix: str, seconds: float) -> None:
        self.token = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self.seconds = seconds
        self._key = f"{{{prefix}}}:owner"
        timeout = max(0.5, seconds / 3)
        if isinstance(target, str):
            target = ValkeyTarget(target)
        self._client = target.client(timeout, timeout)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._renewed_at = 0.0

    @property
    def _ms(self) -> int:
        return int(self.seconds * 1000)

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it (or we still do)."""
        try:
            if self._client.set(self._key, self.token, nx=True, px=self._ms):
                self._renewed_at = time.monotonic()
                return True
            return self.renew()
        except valkey.ValkeyError as exc:
            log.warning("cannot reach Valkey for the ownership lease: %s", exc)
            return False

    def acquire(self) -> None:
        """Wait, as a standby, until this replica owns the queue."""
        waiting_since = time.monotonic()
        while not self.try_acquire():
            gevent.sleep(self.seconds / 3)
        log.info(
            "this replica owns the queue now (lease %s s, waited %.1f s as a standby)",
            self.seconds,
            time.monotonic() - waiting_since,
        )

    def renew(self) -> bool:
        """Extend the lease; False once it is someone else's."""
        if self._renew(keys=[self._key], args=[self.token, self._ms]) == 1:
            self._renewed_at = time.monotonic()
            return True
        return False

    def held(self) -> bool:
        """Still ours as far as this process can tell: renewed within the lease (a process
        paused past it must not act on its own say-so when it wakes)."""
        return time.monotonic() - self._renewed_at < self.seconds

    def keep(self) -> None:
        """Renew every third of the lease; returns when the lease is lost (taken by another
        replica, or not renewed in time because Valkey was unreachable)."""
        while True:
            gevent.sleep(self.seconds / 3)
            try:
                if not self.held() or not self.renew():
                    break
            except valkey.ValkeyError as exc:
                log.warning("lease renewal failed: %s", exc)
                if not self.held():
                    break
        log.error("this replica lost the ownership lease (another one owns the queue)")

    def release(self) -> None:
        """Hand over at once (a graceful stop), if it is still ours."""
        try:
            self._release(keys=[self._key], args=[self.token])
        except valkey.ValkeyError as exc:
            log.warning("could not release the ownership lease: %s", exc)
        self._client.close()
