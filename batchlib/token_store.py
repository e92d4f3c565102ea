"""The database-backed ``TokenStore``: tokens never leave the process except to the platform.

Tasks receive account ids; the runner preloads one page of credentials in a single query
and the client reads them from this in-memory cache. A refresh is persisted with a version
guard, so two workers refreshing the same account keep the first winner's tokens.

The cache only ever moves to a newer ``token_version``: a page read that started before a
refresh and lands after it must not put the old tokens back (the next 401 would then refresh
with a rotated refresh token, which the platform refuses; found by tests/faults under 64
concurrent calls of one expired account).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from sqlalchemy import Engine

from batchlib.errors import PlatformRejected
from batchlib.platform_client import Credentials

__all__ = ["DbTokenStore"]


class DbTokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[int, Credentials] = {}
        self._cache_lock = threading.Lock()  # page reads run in worker threads

    def preload(self, account_ids: Sequence[int]) -> None:
        """Blocking: fill the cache for these accounts (call it in a worker thread)."""
        from db import load_credentials_many, run_transaction

        missing = [i for i in account_ids if i not in self._cache]
        if not missing:
            return
        stored = run_transaction(self._engine, lambda s: load_credentials_many(s, missing))
        for account_id, creds in stored.items():
            self._remember(account_id, _client_creds(creds))

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

    async def save(
        self, account_id: int, old_version: int, access_token: str, refresh_token: str, expires_in: int
    ) -> Credentials:
        from db import load_credentials, run_transaction, save_credentials

        def store(session) -> Credentials:
            save_credentials(
                session, account_id, access_token, refresh_token,
                int(time.time()) + int(expires_in), expected_version=old_version,
            )
            return _client_creds(load_credentials(session, account_id))

        creds = await asyncio.to_thread(run_transaction, self._engine, store)
        return self._remember(account_id, creds)

    def _remember(self, account_id: int, creds: Credentials) -> Credentials:
        """Cache ``creds`` unless a newer version is cached already; returns what is cached."""
        with self._cache_lock:
            cached = self._cache.get(account_id)
            if cached is None or creds.version >= cached.version:
                self._cache[account_id] = cached = creds
            return cached


def _client_creds(stored) -> Credentials:
    return Credentials(stored.access_token or "", stored.refresh_token or "", stored.token_version)
