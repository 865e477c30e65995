"""Who owns the queue when broker replicas share one Valkey: an ownership lease.

`{prefix}:owner` holds the owner's token with a time to live (SET NX PX); the owner renews
it every third of the lease and every write of its store is fenced by it (see valkey.py's
WRITE script), so a replica that lost the lease (paused, cut off) can no longer change the
queue once another one holds it. The others wait as standbys and take over when the key
expires, at most one lease after the owner died, or at once when it hands over (release).

Every replica also says it is there, and as what, in `{prefix}:replicas` (name -> role,
when, and where the others reach it), each time it renews or tries to take the lease: the
roster the dashboard shows, and where a standby finds the owner to relay requests to.
Names not heard from for a lease show as unresponsive, for ROSTER_LEASES leases are dropped."""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid

import gevent
import valkey

from broker.storage.valkey_client import ValkeyTarget

log = logging.getLogger(__name__)

# A replica not heard from for this many leases has gone (killed, scaled down).
ROSTER_LEASES = 3

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
    def __init__(
        self,
        target: ValkeyTarget | str,
        prefix: str,
        seconds: float,
        name: str | None = None,
        url: str | None = None,
    ) -> None:
        self.name = name or socket.gethostname()
        self.url = url  # where the other replicas reach this one (forward.py)
        self.token = f"{self.name}-{uuid.uuid4().hex[:12]}"
        self.seconds = seconds
        self._key = f"{{{prefix}}}:owner"
        self._roster = f"{{{prefix}}}:replicas"
        timeout = max(0.5, seconds / 3)
        if isinstance(target, str):
            target = ValkeyTarget(target)
        self._client = target.client(timeout, timeout)
        self._renew = self._client.register_script(RENEW)
        self._release = self._client.register_script(RELEASE)
        self._renewed_at = 0.0
        self._announced_at = 0.0
        # Times this process went silent for longer than a lease (paused, cut off): what the
        # other replicas may have given up on it for (lanes it held, delegation.py).
        self.lapses = 0

    @property
    def _ms(self) -> int:
        return int(self.seconds * 1000)

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it (or we still do)."""
        try:
            if self._client.set(self._key, self.token, nx=True, px=self._ms):
                self._renewed_at = time.monotonic()
                self.announce("owner")
                return True
            if self.renew():
                return True
            self.announce("standby")
            return False
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
            self.announce("owner")
            return True
        return False

    def announce(self, role: str) -> None:
        """Say in the roster that this replica is here, as `role`."""
        entry = json.dumps(
            {"role": role, "seen": time.time(), "url": self.url, "instance": self.token}
        )
        self._client.hset(self._roster, self.name, entry)
        if self._announced_at and not self.present():
            self.lapses += 1
        self._announced_at = time.monotonic()

    def present(self) -> bool:
        """Said lately that it is here, as far as this process can tell: the owner counts a
        replica silent for a lease as gone and moves its lanes (delegation.py), so one that
        was paused past that must deliver nothing on their account when it wakes."""
        return time.monotonic() - self._announced_at < self.seconds

    def owner_token(self) -> str | None:
        """The token of the replica that owns the queue now, if one does."""
        token = self._client.get(self._key)
        return None if token is None else str(token)

    def roster(self) -> list[dict[str, object]]:
        """Every replica heard from lately (name, role, seconds since), the gone dropped."""
        now = time.time()
        found, gone = [], []
        for name, entry in sorted(self._client.hgetall(self._roster).items()):
            fields = json.loads(entry)
            ago = max(0.0, now - fields["seen"])
            if ago > ROSTER_LEASES * self.seconds:
                gone.append(name)
            else:
                # Every replica says so each third of a lease: one silent for longer is
                # killed or frozen (a killed owner would otherwise show as an owner still).
                role = fields["role"] if ago <= self.seconds else "unresponsive"
                found.append(
                    {
                        "name": name,
                        "role": role,
                        "seen_ago": round(ago, 1),
                        "instance": fields.get("instance"),
                    }
                )
        if gone:
            self._client.hdel(self._roster, *gone)
        return found

    def owner_url(self) -> str | None:
        """Where the replica that owns the queue is reached, if one does and said so lately."""
        now = time.time()
        owners = [json.loads(entry) for entry in self._client.hvals(self._roster)]
        fresh = [o for o in owners if o["role"] == "owner" and now - o["seen"] < self.seconds]
        # Just after a takeover the dead owner's entry is still fresh: the newest is the one.
        return max(fresh, key=lambda o: o["seen"]).get("url") if fresh else None

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
        """Hand over at once (a graceful stop), if it is still ours; leave the roster."""
        try:
            self._release(keys=[self._key], args=[self.token])
            self._client.hdel(self._roster, self.name)
        except valkey.ValkeyError as exc:
            log.warning("could not release the ownership lease: %s", exc)
        self._client.close()
