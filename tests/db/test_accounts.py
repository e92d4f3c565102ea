"""The la_alt_account repository."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from db import (
    Account,
    active_account_ids,
    foreign_ids,
    load_credentials,
    record_checks,
    save_credentials,
    tenant_exists,
    tenants_with_accounts,
    update_profile,
    upsert_accounts,
)

SECRET = "tok-SECRET-123"


def _seed(engine: Engine) -> None:
    rows = [
        {"id": 1, "tenant_id": 7, "platform_uid": "u1", "access_token": SECRET, "refresh_token": "r-SECRET", "status": "alive"},
        {"id": 2, "tenant_id": 7, "platform_uid": "u2", "status": "banned"},
        {"id": 3, "tenant_id": 7, "platform_uid": "u3", "delete_time": 5},
        {"id": 4, "tenant_id": 8, "platform_uid": "u4"},
        {"id": 5, "tenant_id": 9, "platform_uid": "u5", "delete_time": 5},
    ]
    with Session(engine) as s, s.begin():
        assert upsert_accounts(s, rows, now=1) == 5
        upsert_accounts(s, [{"id": 4, "nickname": "four"}], now=2)


def test_account_queries(engine: Engine) -> None:
    _seed(engine)
    with Session(engine) as s:
        assert tenant_exists(s, 7) and not tenant_exists(s, 9) and not tenant_exists(s, 99)
        assert active_account_ids(s, 7) == [1]
        assert foreign_ids(s, 7, [1, 2, 3, 4, 4, 99]) == [3, 4, 99]
        assert tenants_with_accounts(s) == [7, 8]
        account = s.get(Account, 4)
        assert account is not None and account.nickname == "four" and account.create_time == 1


def test_credentials_guarded_and_hidden(engine: Engine) -> None:
    _seed(engine)
    with Session(engine) as s, s.begin():
        creds = load_credentials(s, 1)
        assert creds is not None and creds.access_token == SECRET and creds.platform_uid == "u1"
        assert SECRET not in repr(creds) and "r-SECRET" not in repr(creds)
        assert SECRET not in repr(s.get(Account, 1))
        assert save_credentials(s, 1, "new-a", "new-r", 123, previous_refresh="r-SECRET")
        assert not save_credentials(s, 1, "late-a", "late-r", 456, previous_refresh="r-SECRET")  # lost the race
        stored = s.get(Account, 1)
        assert stored is not None and (stored.access_token, stored.token_expires_at, stored.token_version) == ("new-a", 123, 1)
        assert load_credentials(s, 3) is None


def test_record_checks_and_profile(engine: Engine) -> None:
    _seed(engine)
    with Session(engine) as s, s.begin():
        assert record_checks(s, [(1, "restricted", 50), (4, "alive", 51)]) == 2
        update_profile(s, 1, nickname="昵称", avatar_url="http://x/a.png", now=60)
    with Session(engine) as s:
        one, four = s.get(Account, 1), s.get(Account, 4)
        assert one is not None and four is not None
        assert (one.status, one.last_check_time, one.nickname, one.avatar_url) == ("restricted", 50, "昵称", "http://x/a.png")
        assert (four.status, four.last_check_time) == ("alive", 51)


def test_token_store_cache_never_goes_back_to_older_tokens(mysql_engine: Engine, monkeypatch) -> None:
    """A page read that started before a refresh and lands after it keeps the refreshed tokens.
    (MariaDB only: on SQLite the open read transaction makes the refresh wait, so no race.)"""
    import asyncio
    import threading

    import db as db_module
    from batchlib import token_store
    from batchlib.platform_client import Credentials
    from batchlib.token_store import DbTokenStore

    _seed(mysql_engine)
    store = DbTokenStore(mysql_engine)
    read_done, saved = threading.Event(), threading.Event()
    real_read = db_module.load_credentials_many

    def slow_read(session, ids):  # reads version 0, then lands only after the refresh was saved
        found = real_read(session, ids)
        read_done.set()
        saved.wait(10)
        return found

    monkeypatch.setattr(token_store, "load_credentials_many", slow_read)  # the name the store calls

    async def race():
        page = asyncio.create_task(asyncio.to_thread(store.preload, [1]))
        await asyncio.to_thread(read_done.wait, 10)
        refreshed = await store.save(1, Credentials(SECRET, "r-SECRET", 1), "at-new", "rt-new", 3600)
        saved.set()
        await page
        return refreshed, await store.load(1)

    refreshed, cached = asyncio.run(race())
    assert read_done.is_set()  # the staged page read took place (a patch that missed would pass vacuously)
    assert refreshed.access_token == "at-new"
    assert cached == refreshed  # before the fix: the late page read put version 0 back


def test_token_store_save_keeps_a_pair_stored_by_someone_else(engine: Engine) -> None:
    """Compare-and-set on the refresh token: when the row moved on since we read it (the admin
    system refreshed), our pair is not written and the row's pair is what the store returns."""
    import asyncio

    from batchlib.token_store import DbTokenStore

    _seed(engine)
    store = DbTokenStore(engine)

    async def scenario():
        ours = await store.load(1)
        with engine.begin() as conn:  # the panel's refresh lands first
            conn.execute(text("UPDATE la_alt_account SET access_token='at-panel', refresh_token='rt-panel' WHERE id=1"))
        kept = await store.save(1, ours, "at-ours", "rt-ours", 60)
        again = await store.save(1, kept, "at-next", "rt-next", 60)  # refreshed from the panel's pair: stored
        return ours, kept, again

    ours, kept, again = asyncio.run(scenario())
    assert (kept.access_token, kept.refresh_token) == ("at-panel", "rt-panel") and kept.version > ours.version
    assert (again.access_token, again.refresh_token) == ("at-next", "rt-next") and again.version > kept.version
    with Session(engine) as s:
        assert s.get(Account, 1).refresh_token == "rt-next"  # type: ignore[union-attr]
