"""A renewable Redis lease: the fast guard for one active batch per (tenant, type).

The lease is an optimisation, not the safety net: after a Redis restart (no persistence)
or a TTL expiry another client can take the key, so every write a batch makes is also
fenced in the database. A key that vanished is taken again by the renewer; a key another
owner holds flips ``lost``, and the runner stops.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError

from batchcore.errors import BatchAlreadyActive

__all__ = ["Lease", "RedisLease", "NullLease", "lease_key", "lease_for"]

log = logging.getLogger(__name__)


def lease_key(prefix: str, tenant_id: int, task_type: str) -> str:
    return f"{prefix}lock:{task_type}:{tenant_id}"


class Lease:
    """What the runner needs from a guard: acquire, a ``lost`` flag, release."""

    key: str = ""

    @property
    def lost(self) -> bool:
        return False

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class NullLease(Lease):
    """No Redis configured: the database guard alone prevents a second active batch."""


class RedisLease(Lease):
    """``SET NX PX`` lease renewed from a daemon thread every ``ttl / 3`` seconds."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        ttl_s: float,
        tenant_id: int,
        task_type: str,
        batch_id: int | None = None,
    ) -> None:
        self.key = key
        self._client = client
        self._ttl_s = ttl_s
        self._what = (tenant_id, task_type, batch_id)
        # thread_local=False: the renewer thread must see the token to extend it.
        self._lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def acquire(self) -> None:
        tenant_id, task_type, batch_id = self._what
        if not self._lock.acquire(blocking=False):
            raise BatchAlreadyActive(tenant_id, task_type)
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.key}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        interval = self._ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self._lock.reacquire()
            except LockNotOwnedError:
                # The key is gone (Redis restarted without persistence, or the TTL ran out
                # while we were paused) or another owner holds it. Gone: take it again and go
                # on, the database fence still guards every write (found by tests/faults: a
                # Redis restart used to stop every running batch). Held by another: lost.
                try:
                    if self._lock.acquire(blocking=False):
                        log.warning("lease %s had vanished (Redis restart or expiry); re-acquired", self.key)
                        continue
                except RedisError as exc:
                    log.warning("lease %s renewal failed: %s", self.key, type(exc).__name__)
                    continue
                log.warning("lease %s lost (taken by another owner)", self.key)
                self._lost.set()
                return
            except RedisError as exc:
                # Redis unreachable: keep trying until the TTL would have run out.
                log.warning("lease %s renewal failed: %s", self.key, type(exc).__name__)

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self._lock.release()
        except (LockError, RedisError):
            # Already gone (expired, Redis restarted): nothing of ours to delete.
            pass


def lease_for(settings, tenant_id: int, task_type: str) -> Lease:
    """The Redis lease when Redis is configured and reachable; otherwise the database guard alone."""
    if settings.redis_url is None:
        return NullLease()
    client = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=2
    )
    try:
        client.ping()
    except RedisError as exc:
        log.warning("Redis unreachable (%s): the database guard alone protects this batch", type(exc).__name__)
        return NullLease()
    return RedisLease(
        client, lease_key(settings.redis_key_prefix, tenant_id, task_type),
        ttl_s=settings.lock_ttl_s, tenant_id=tenant_id, task_type=task_type,
    )
