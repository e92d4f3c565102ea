"""The admin system's own accounts table, adopted through BATCH_ACCOUNT_* settings.

A MariaDB database created from the panel's original DDL plus a panel-shaped ``la_alt_account``
(other column names, tinyint status codes, columns of its own): the migrations leave that
table byte for byte as it was, an account_check runs on it and stores tinyint codes, and the
panel refreshing tokens itself (the way ``AltAccountService::refreshToken`` does) while batches
run leaves no account holding a refresh token the platform has revoked.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import Iterator

import httpx
import pytest

from db import upgrade
from db.engine import make_engine
from flows.account_check import account_check
from tests.panel_accounts import CODES, PANEL_SETTINGS, panel_database, show_create
from tests.support.batch_env import BatchEnv, make_batch_env


def panel_rows(env: BatchEnv, tenant_id: int) -> dict[str, int]:
    """The simulator's accounts of a tenant, inserted as the panel stores them; uid -> id."""
    now = int(time.time())
    with env.engine.begin() as conn:
        for a in env.sim.accounts(tenant_id):
            conn.exec_driver_sql(
                "INSERT INTO la_alt_account (tenant_id, uid, nick_name, avatar, token, refresh_token, expire_time,"
                " status, login_ip, create_time, update_time) VALUES (%s, %s, %s, '', %s, %s, %s, 1, '10.0.0.9', %s, %s)",
                (tenant_id, a["uid"], a["nickname"], a["access_token"], a["refresh_token"], now + 3600, now, now),
            )
    return {r.uid: r.id for r in env.sql("SELECT id, uid FROM la_alt_account WHERE tenant_id = :t", t=tenant_id)}


@pytest.fixture
def panel_env(prefect_api: None, mysql_url: str, redis_url: str, redis_prefix: str,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchEnv]:
    """A database with the panel's tables; its accounts table adopted; migrated twice."""
    panel_database(mysql_url)
    before = show_create(mysql_url)
    for env in make_batch_env(monkeypatch, mysql_url, redis_url, redis_prefix, **PANEL_SETTINGS):
        upgrade(mysql_url)  # at head: a no-op
        assert show_create(mysql_url) == before
        yield env


def test_account_check_on_the_panels_table_stores_its_status_codes(panel_env: BatchEnv) -> None:
    before = show_create(panel_env.url)
    panel_env.sim.seed({7: 60}, banned_fraction=0.2, restricted_fraction=0.1, seed=5)
    ids = panel_rows(panel_env, 7)
    panel_env.sql("UPDATE la_alt_account SET status = 3 WHERE id = :i", i=min(ids.values()))  # disabled: skipped
    panel_env.sql("UPDATE la_alt_account SET delete_time = 5 WHERE id = :i", i=max(ids.values()))  # deleted

    state = asyncio.run(account_check(tenant_id=7, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in panel_env.sql("SELECT id FROM la_batch_task")]
    panel_env.assert_consistent(batch_id)
    assert panel_env.batch(batch_id)["success_count"] == 58
    expected = {a["uid"]: CODES[a["status"]] for a in panel_env.sim.accounts(7)}
    stored = {r.uid: (r.status, r.login_ip) for r in panel_env.sql("SELECT uid, status, login_ip FROM la_alt_account")}
    checked = {uid for uid, i in ids.items() if i not in (min(ids.values()), max(ids.values()))}
    assert {uid: stored[uid][0] for uid in checked} == {uid: expected[uid] for uid in checked}
    assert {2, 4} <= {stored[uid][0] for uid in checked}  # banned and restricted among them
    assert stored[next(u for u, i in ids.items() if i == min(ids.values()))][0] == 3  # untouched
    assert {ip for _, ip in stored.values()} == {"10.0.0.9"}  # the panel's own columns stay as they were
    assert show_create(panel_env.url) == before


def test_a_configured_column_the_table_lacks_is_refused_before_anything_is_written(
    panel_env: BatchEnv, configure
) -> None:
    panel_env.sim.seed({7: 3})
    panel_rows(panel_env, 7)
    configure(account_col_last_check_time="checked_at")

    state = asyncio.run(account_check(tenant_id=7, return_state=True))

    assert not state.is_completed()
    assert state.message.startswith("rejected:") and "no column checked_at" in state.message
    assert "BATCH_ACCOUNT_COL_LAST_CHECK_TIME" in state.message and "\n" not in state.message
    assert panel_env.sql("SELECT id FROM la_batch_task") == []
    assert panel_env.sim.stats()["total"] == 0


def panel_refresher(url: str, sim_url: str, ids: list[int], stop, refreshed, refused) -> None:
    """The PHP panel's ``AltAccountService::refreshToken``, in a loop over random accounts: read
    the stored refresh token, call the platform, write the new pair with a plain UPDATE."""
    engine = make_engine(url)
    rng = random.Random(3)
    try:
        with httpx.Client(base_url=sim_url, timeout=10) as http:
            while not stop.is_set():
                account_id = rng.choice(ids)
                with engine.begin() as conn:
                    (refresh,) = conn.exec_driver_sql(
                        "SELECT refresh_token FROM la_alt_account WHERE id = %s", (account_id,)
                    ).one()
                reply = http.post("/v1/oauth/refresh", json={"refresh_token": refresh})
                if reply.status_code != 200:
                    refused.value += 1
                    continue
                body = reply.json()
                with engine.begin() as conn:
                    conn.exec_driver_sql(
                        "UPDATE la_alt_account SET token = %s, refresh_token = %s, expire_time = %s,"
                        " update_time = %s WHERE id = %s",
                        (body["access_token"], body["refresh_token"], int(time.time()) + body["expires_in"],
                         int(time.time()), account_id),
                    )
                refreshed.value += 1
                time.sleep(0.01)
    finally:
        engine.dispose()


def test_tokens_refreshed_by_the_panel_meanwhile_are_adopted(panel_env: BatchEnv, configure) -> None:
    """Short token lifetimes; a second process refreshes random accounts the way the panel does
    (``panel_refresher``) while three account_check batches run. At the end every account holds
    the platform's current refresh token and every item succeeded."""
    panel_env.sim.seed({7: 40}, seed=9)
    ids = panel_rows(panel_env, 7)
    panel_env.sim.configure(token_lifetime_s=3, latency_ms=20, jitter_ms=20)
    panel_env.sim.expire(tenant_id=7)  # the stored access tokens are expired from the start
    configure(concurrency=10)
    spawn = multiprocessing.get_context("spawn")
    stop, refreshed, refused = spawn.Event(), spawn.Value("i", 0), spawn.Value("i", 0)
    panel = spawn.Process(
        target=panel_refresher, args=(panel_env.url, panel_env.sim.url, list(ids.values()), stop, refreshed, refused),
        daemon=True,
    )
    panel.start()
    try:
        while refreshed.value < 5 and panel.is_alive():  # the panel is at work before the first batch
            time.sleep(0.05)
        states = [asyncio.run(account_check(tenant_id=7, return_state=True)) for _ in range(3)]
    finally:
        stop.set()
        panel.join(15)
    panel_refreshes = {"ok": refreshed.value, "refused": refused.value}

    assert all(s.is_completed() for s in states), [s.message for s in states]
    errors = panel_env.sql("SELECT DISTINCT error_message FROM la_batch_task_detail WHERE status <> 'success'")
    assert errors == [], errors
    for row in panel_env.sql("SELECT id, success_count, failed_count FROM la_batch_task"):
        panel_env.assert_consistent(row.id)
        assert (row.success_count, row.failed_count) == (40, 0), row
    assert panel_refreshes["ok"] >= 20, panel_refreshes  # the panel really did rotate tokens meanwhile
    ours = panel_env.sim.stats()["refreshes"] - panel_refreshes["ok"]
    assert ours > 0  # and so did the runs
    current = {a["uid"]: a["refresh_token"] for a in panel_env.sim.accounts(7)}
    stored = {r.uid: r.refresh_token for r in panel_env.sql("SELECT uid, refresh_token FROM la_alt_account")}
    revoked = [uid for uid in current if stored[uid] != current[uid]]
    assert revoked == []
