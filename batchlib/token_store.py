"""The database-backed ``TokenStore``: tokens never leave the process except to the platform.

Tasks receive account ids; the runner preloads one page of credentials in a single query
and the client reads them from this in-memory cache.

The admin system refreshes the same accounts itself (and other workers may too), so a
refresh is stored with a compare-and-set on the previous refresh token, which needs no
column of ours on its table: if the row no longer holds the token we refreshed with,
someone else stored a newer pair and we use theirs. Before refreshing, the client re-reads
the row (``reload``): a pair the admin system stored meanwhile is used as it is, and no
refresh is spent on a token that was already rotated.

``Credentials.version`` is this store's own counter: it grows whenever the cached tokens
of an account change. The cache never goes back to older tokens: a page read that started
before a refresh or reload and lands after it is dropped for that account (otherwise the
next 401 would refresh with a rotated refresh token, which the platform refuses; found by
tests/faults under 64 concurrent calls of one expired account).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from sqlalchemy import Engine

from batchcore.errors import PlatformRejected
from batchlib.platform_client import Credentials
from db import load_credentials, load_credentials_many, run_transaction, save_credentials

__all__ = ["DbTokenStore"]


class DbTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[int, Credentials] = {}
        self._lock = threading.Lock()  # page reads run in worker threads
        self._seq = 0  # grows with every read or write of a single account's row
        self._touched: dict[int, int] = {}  # account -> _seq of its last single-row read or write
        self._versions = 0

    def preload(self, account_ids: Sequence[int]) -> None:
        """Blocking: fill the cache for these accounts (call it in a worker thread)."""
        missing = [i for i in account_ids if i not in self._cache]
        if not missing:
            return
        with self._lock:
            started = self._seq
        stored = run_transaction(self._engine, lambda s: load_credentials_many(s, missing))
        with self._lock:
            for account_id, creds in stored.items():
                if self._touched.get(account_id, -1) <= started:  # nothing fresher landed meanwhile
                    self._adopt(account_id, creds)

    def forget(self, account_ids: Sequence[int]) -> None:
        for account_id in account_ids:
            self._cache.pop(account_id, None)

    async def load(self, account_id: int) -> Credentials:
        cached = self._cache.get(account_id)
        if cached is None:
            await asyncio.to_thread(self.preload, [account_id])
            cached = self._cache.get(account_id)
        if cached is None:
            raise PlatformRejected("account not found or deleted")
        return cached

    async def reload(self, account_id: int) -> Credentials:
        """Read the row again (the admin system may have refreshed it); returns what is cached now."""
        stored = await asyncio.to_thread(run_transaction, self._engine, lambda s: load_credentials(s, account_id))
        return self._landed(account_id, stored)

    async def save(
        self, account_id: int, old: Credentials, access_token: str, refresh_token: str, expires_in: int
    ) -> Credentials:
        """Store the pair obtained by refreshing ``old`` unless the row moved on; returns the row's pair."""
        def store(session):
            save_credentials(
                session, account_id, access_token, refresh_token,
                int(time.time()) + int(expires_in), previous_refresh=old.refresh_token,
            )
            return load_credentials(session, account_id)

        stored = await asyncio.to_thread(run_transaction, self._engine, store)
        return self._landed(account_id, stored)

    def _landed(self, account_id: int, stored) -> Credentials:
        with self._lock:
            self._seq += 1
            self._touched[account_id] = self._seq
            if stored is None:
                self._cache.pop(account_id, None)
                raise PlatformRejected("account not found or deleted")
            return self._adopt(account_id, stored)

    def _adopt(self, account_id: int, stored) -> Credentials:
        """Cache the row's tokens (under the lock); the version grows only when they changed."""
        cached = self._cache.get(account_id)
        access, refresh = stored.access_token or "", stored.refresh_token or ""
        if cached is not None and (cached.access_token, cached.refresh_token) == (access, refresh):
            return cached
        self._versions += 1  # one counter for all accounts: a forgotten account never reuses a version
        creds = self._cache[account_id] = Credentials(access, refresh, self._versions)
        return creds
