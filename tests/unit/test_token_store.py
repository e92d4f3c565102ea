"""DbTokenStore on SQLite: the cache, the compare-and-set on the refresh token, rows changed by others."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine, text

from batchlib.errors import PlatformRejected
from batchlib.platform_client import Credentials
from batchlib.seeding import import_accounts
from batchlib.token_store import DbTokenStore

pytestmark = pytest.mark.unit

ACCOUNT = 700001  # account_id_for("u7-000001")


def run(coro):
    return asyncio.run(coro)


def seed(engine: Engine, n: int = 2) -> list[int]:
    accounts = [
        {"uid": f"u7-{i:06d}", "tenant_id": 7, "access_token": f"at-{i}", "refresh_token": f"rt-{i}"}
        for i in range(1, n + 1)
    ]
    return import_accounts(engine, accounts)


def row_tokens(engine: Engine, account_id: int) -> tuple[str, str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT access_token, refresh_token FROM la_alt_account WHERE id = :i"),
                           {"i": account_id}).one()
    return row.access_token, row.refresh_token


def set_row(engine: Engine, account_id: int, **values: object) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE la_alt_account SET {sets} WHERE id = :i"), {**values, "i": account_id})


def test_load_reads_the_row_once_then_the_cache(sqlite_engine: Engine) -> None:
    assert seed(sqlite_engine) == [ACCOUNT, ACCOUNT + 1]
    store = DbTokenStore(sqlite_engine)
    first = run(store.load(ACCOUNT))
    assert (first.access_token, first.refresh_token) == ("at-1", "rt-1")
    set_row(sqlite_engine, ACCOUNT, access_token="at-changed")
    assert run(store.load(ACCOUNT)) is first  # cached: no read per call


def test_preload_fills_the_cache_in_one_read(sqlite_engine: Engine) -> None:
    seed(sqlite_engine, 3)
    store = DbTokenStore(sqlite_engine)
    store.preload([ACCOUNT, ACCOUNT + 2, 999])
    for i in (1, 2, 3):
        set_row(sqlite_engine, ACCOUNT + i - 1, access_token="later")
    assert run(store.load(ACCOUNT)).access_token == "at-1"
    assert run(store.load(ACCOUNT + 2)).access_token == "at-3"
    assert run(store.load(ACCOUNT + 1)).access_token == "later"  # not preloaded: read now


def test_an_unknown_or_deleted_account_is_rejected(sqlite_engine: Engine) -> None:
    seed(sqlite_engine)
    store = DbTokenStore(sqlite_engine)
    with pytest.raises(PlatformRejected, match="account not found or deleted"):
        run(store.load(123))
    run(store.load(ACCOUNT))
    set_row(sqlite_engine, ACCOUNT, delete_time=1)
    with pytest.raises(PlatformRejected):
        run(store.reload(ACCOUNT))
    with pytest.raises(PlatformRejected):  # and it left the cache
        run(store.load(ACCOUNT))


def test_save_stores_our_refresh_and_moves_the_version_on(sqlite_engine: Engine) -> None:
    seed(sqlite_engine)
    store = DbTokenStore(sqlite_engine)
    old = run(store.load(ACCOUNT))
    new = run(store.save(ACCOUNT, old, "at-new", "rt-new", 3600))
    assert (new.access_token, new.refresh_token) == ("at-new", "rt-new") and new.version > old.version
    assert row_tokens(sqlite_engine, ACCOUNT) == ("at-new", "rt-new")
    assert run(store.load(ACCOUNT)) == new


def test_save_keeps_the_pair_someone_else_stored_first(sqlite_engine: Engine) -> None:
    """Compare-and-set on the refresh token: the admin system rotated the row since we read it."""
    seed(sqlite_engine)
    store = DbTokenStore(sqlite_engine)
    old = run(store.load(ACCOUNT))
    set_row(sqlite_engine, ACCOUNT, access_token="at-panel", refresh_token="rt-panel")
    kept = run(store.save(ACCOUNT, old, "at-ours", "rt-ours", 3600))
    assert (kept.access_token, kept.refresh_token) == ("at-panel", "rt-panel")
    assert row_tokens(sqlite_engine, ACCOUNT) == ("at-panel", "rt-panel")
    assert kept.version != old.version


def test_reload_sees_a_rotation_and_keeps_the_version_when_nothing_changed(sqlite_engine: Engine) -> None:
    seed(sqlite_engine)
    store = DbTokenStore(sqlite_engine)
    first = run(store.load(ACCOUNT))
    assert run(store.reload(ACCOUNT)) is first  # same tokens: same version, no needless refresh
    set_row(sqlite_engine, ACCOUNT, access_token="at-2", refresh_token="rt-2")
    rotated = run(store.reload(ACCOUNT))
    assert rotated == Credentials("at-2", "rt-2", rotated.version) and rotated.version > first.version


def test_versions_never_repeat_across_accounts_or_forgetting(sqlite_engine: Engine) -> None:
    seed(sqlite_engine)
    store = DbTokenStore(sqlite_engine)
    a = run(store.load(ACCOUNT))
    b = run(store.load(ACCOUNT + 1))
    store.forget([ACCOUNT])
    set_row(sqlite_engine, ACCOUNT, access_token="at-x")
    again = run(store.load(ACCOUNT))
    assert again.access_token == "at-x"
    assert len({a.version, b.version, again.version}) == 3
