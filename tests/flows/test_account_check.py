"""account-check under Prefect: keyed concurrency, one active batch, resume, cancel, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling
from sqlalchemy import event

from batchlib.locks import lease_key
from db import mark_failed_unowned, run_transaction
from flows.account_check import account_check
from tests.support.batch_env import BatchEnv

REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


def batch_ids(env: BatchEnv) -> list[int]:
    return [r.id for r in env.sql("SELECT id FROM la_batch_task ORDER BY id")]


def test_two_tenants_in_parallel_complete_within_their_limit(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=10)
    # 3 s of calls per batch: long enough that the two overlap even when one starts late on a busy host.
    batch_env.sim.configure(latency_ms=100, jitter_ms=10)
    ids = batch_env.seed({7: 300, 8: 300}, banned_fraction=0.1, seed=3)

    async def both():
        return await asyncio.gather(
            account_check(tenant_id=7, return_state=True), account_check(tenant_id=8, return_state=True)
        )

    states = run(both())
    assert all(s.is_completed() for s in states), [s.message for s in states]
    for batch_id in batch_ids(batch_env):
        batch_env.assert_consistent(batch_id)
        row = batch_env.batch(batch_id)
        assert (row["task_status"], row["total_count"], row["success_count"]) == ("completed", 300, 300)
        assert row["start_time"] and row["end_time"] >= row["start_time"]
    stats = batch_env.sim.stats()
    assert stats["max_in_flight_by_tenant"]["7"] <= 10 and stats["max_in_flight_by_tenant"]["8"] <= 10
    windows = {}
    for call in batch_env.sim.calls():
        tenant = call["uid"].split("-")[0]
        first, last = windows.get(tenant, (call["t"], call["t"]))
        windows[tenant] = (min(first, call["t"]), max(last, call["t"]))
    assert windows["u7"][0] < windows["u8"][1] and windows["u8"][0] < windows["u7"][1]  # side by side
    assert set(batch_env.uid_calls().values()) == {1} and len(batch_env.uid_calls()) == len(ids)
    # The accounts table learned each status; the simulator's banned accounts are banned here.
    banned_sim = {a["uid"] for t in (7, 8) for a in batch_env.sim.accounts(t) if a["status"] == "banned"}
    banned_db = {r.platform_uid for r in batch_env.sql("SELECT platform_uid FROM la_alt_account WHERE status='banned'")}
    assert banned_sim and banned_db == banned_sim
    assert not batch_env.sql("SELECT id FROM la_alt_account WHERE last_check_time IS NULL")
    results = batch_env.sql("SELECT result FROM la_batch_task_detail LIMIT 5")
    assert all('"status"' in r.result and '"latency_ms"' in r.result for r in results)
    assert not redis.Redis.from_url(os.environ["BATCH_REDIS_URL"]).keys(f"{batch_env.redis_prefix}*")


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis-lease", "database-guard-only"])
def test_two_starts_of_the_same_tenant_and_type_run_once(batch_env: BatchEnv, configure, with_redis) -> None:
    if not with_redis:
        configure(redis_url=None)
    batch_env.sim.configure(latency_ms=40)
    batch_env.seed({7: 60})

    async def twice():
        return await asyncio.gather(
            account_check(tenant_id=7, return_state=True), account_check(tenant_id=7, return_state=True)
        )

    states = run(twice())
    assert sorted(s.type.value for s in states) == ["COMPLETED", "FAILED"]
    refused = next(s for s in states if s.is_failed())
    assert refused.message.startswith("rejected: another account_check batch of tenant 7 is already")
    assert len(batch_ids(batch_env)) == 1
    assert len(batch_env.uid_calls()) == 60 and set(batch_env.uid_calls().values()) == {1}


def kill_a_run_midway(batch_env: BatchEnv, *, after: int) -> int:
    """Start the CLI in a process of its own, SIGKILL it once ``after`` items are recorded."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "BATCH_CONCURRENCY": "5"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "flows.account_check", "--tenant-id", "7"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            rows = batch_env.sql("SELECT id, processed_count FROM la_batch_task")
            if rows and rows[0].processed_count >= after:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first run made no progress")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    # The dead run's lease expires by TTL; a real restart waits for it, the test clears it.
    redis.Redis.from_url(os.environ["BATCH_REDIS_URL"]).delete(lease_key(batch_env.redis_prefix, 7, "account_check"))
    return rows[0].id


def test_takeover_claims_a_batch_its_dead_run_left_running(batch_env: BatchEnv) -> None:
    batch_env.sim.configure(latency_ms=50)
    batch_env.seed({7: 120})
    batch_id = kill_a_run_midway(batch_env, after=30)
    fence = batch_env.sql("SELECT fence FROM la_batch_run WHERE task_id = :b", b=batch_id)[0].fence

    refused = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))
    taken = run(account_check(tenant_id=7, batch_id=batch_id, takeover=True, return_state=True))

    assert refused.is_failed() and "is running and cannot be started" in refused.message
    assert taken.is_completed(), taken.message
    assert batch_env.sql("SELECT fence FROM la_batch_run WHERE task_id = :b", b=batch_id)[0].fence == fence + 1
    assert batch_env.batch(batch_id)["processed_count"] == 120
    batch_env.assert_consistent(batch_id)


def test_resume_after_a_killed_run_calls_only_unfinished_items(batch_env: BatchEnv, configure) -> None:
    batch_env.sim.configure(latency_ms=50)
    ids = batch_env.seed({7: 200})
    batch_id = kill_a_run_midway(batch_env, after=60)
    assert batch_env.batch(batch_id)["task_status"] == "running"  # the dead run left it so
    done_before = {r.item_id for r in batch_env.sql(
        "SELECT item_id FROM la_batch_task_detail WHERE task_id = :b AND status <> 'pending'", b=batch_id)}
    fence = batch_env.sql("SELECT fence FROM la_batch_run WHERE task_id = :b", b=batch_id)[0].fence
    assert run_transaction(batch_env.engine, lambda s: mark_failed_unowned(s, batch_id, fence, "worker died"))

    state = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_completed(), state.message
    batch_env.assert_consistent(batch_id)
    row = batch_env.batch(batch_id)
    assert (row["task_status"], row["processed_count"], row["total_count"]) == ("completed", 200, 200)
    calls = batch_env.uid_calls()
    assert all(calls[i] == 1 for i in done_before)  # finished items were not called again
    redone = [i for i in ids if calls.get(i, 0) > 1]
    # At most the killed run's in-flight items (5) plus those finished but not yet flushed
    # (one flush interval, 0.2 s here, at ~100 items/s).
    assert len(redone) <= 5 + 25
    assert set(calls) == set(ids)


def test_slow_platform_past_wait_timeout_loses_no_item(batch_env: BatchEnv, configure) -> None:
    configure(database_url=batch_env.url + "&init_command=SET SESSION wait_timeout=2", concurrency=10,
              http_read_timeout_s=10)
    batch_env.sim.configure(latency_ms=2600)
    batch_env.seed({7: 20})

    state = run(account_check(tenant_id=7, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = batch_ids(batch_env)
    row = batch_env.batch(batch_id)
    assert (row["success_count"], row["failed_count"]) == (20, 0)
    batch_env.assert_consistent(batch_id)


@pytest.mark.parametrize("how", ["prefect", "admin-panel"])
def test_cancellation_mid_batch(batch_env: BatchEnv, configure, how: str) -> None:
    configure(concurrency=4)
    batch_env.sim.configure(latency_ms=100)
    batch_env.seed({7: 200})

    async def cancel_when_started():
        flow = asyncio.create_task(account_check(tenant_id=7, return_state=True))
        while True:
            await asyncio.sleep(0.1)
            rows = batch_env.sql("SELECT t.id, t.processed_count, r.flow_run_id FROM la_batch_task t "
                                 "JOIN la_batch_run r ON r.task_id = t.id")
            if rows and rows[0].processed_count >= 10:
                break
        if how == "prefect":
            async with get_client() as client:
                await client.set_flow_run_state(rows[0].flow_run_id, Cancelling(), force=True)
        else:
            batch_env.sql("UPDATE la_batch_task SET task_status='cancelled' WHERE id=:id", id=rows[0].id)
        return rows[0].id, await flow

    batch_id, state = run(cancel_when_started())

    assert state.is_cancelled(), state.message
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "cancelled" and row["end_time"]
    assert 10 <= row["processed_count"] < 200
    batch_env.assert_consistent(batch_id)
    calls_at_end = batch_env.sim.stats()["total"]
    time.sleep(0.5)
    assert batch_env.sim.stats()["total"] == calls_at_end  # no further platform calls
    assert calls_at_end <= row["processed_count"] + 4  # at most the in-flight ones were not recorded
    assert not redis.Redis.from_url(os.environ["BATCH_REDIS_URL"]).keys(f"{batch_env.redis_prefix}*")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tenant_id": 99}, "unknown tenant 99"),
        ({"tenant_id": 7, "account_ids": [700001, 800001]}, "not active accounts of tenant 7: 800001"),
        ({"tenant_id": 7, "account_ids": []}, "account_ids is empty"),
        ({"tenant_id": 7, "account_ids": [700001, 700001]}, "duplicate account ids: 700001"),
        ({"tenant_id": -3}, "tenant id must be between 1"),
        ({"tenant_id": 7, "batch_id": 4242}, "batch 4242 does not exist"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(batch_env: BatchEnv, params: dict, message: str) -> None:
    batch_env.seed({7: 3, 8: 3})

    state = run(account_check(**params, return_state=True))

    assert state.is_failed() and state.message.startswith("rejected: ")
    assert message in state.message
    assert batch_ids(batch_env) == []
    assert batch_env.sim.stats()["total"] == 0


def test_a_whole_tenant_check_inserts_its_detail_rows_in_the_database(batch_env: BatchEnv) -> None:
    """No account ids: the detail rows are the tenant's active accounts, written by one INSERT ...
    SELECT (the ids never come to the client); a tenant with none active is refused, nothing written."""
    ids = batch_env.seed({7: 40, 8: 5})
    tenant7 = [i for i in ids if i // 100000 == 7]
    batch_env.sql("UPDATE la_alt_account SET status = 'banned' WHERE id IN (:a, :b)", a=tenant7[0], b=tenant7[1])
    batch_env.sql("UPDATE la_alt_account SET status = 'disabled' WHERE tenant_id = 8")
    inserts: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("INSERT") and "la_batch_task_detail" in statement:
            inserts.append(statement)

    event.listen(batch_env.engine, "before_cursor_execute", seen)
    try:
        state = run(account_check(tenant_id=7, return_state=True))
        refused = run(account_check(tenant_id=8, return_state=True))
    finally:
        event.remove(batch_env.engine, "before_cursor_execute", seen)

    assert state.is_completed(), state.message
    (batch_id,) = batch_ids(batch_env)
    assert len(inserts) == 1 and "SELECT" in inserts[0].upper() and "VALUES" not in inserts[0].upper()
    rows = batch_env.sql("SELECT item_id, status FROM la_batch_task_detail WHERE task_id = :b ORDER BY item_id", b=batch_id)
    assert [r.item_id for r in rows] == tenant7[2:] and {r.status for r in rows} == {"success"}
    batch_env.assert_consistent(batch_id)
    assert refused.is_failed() and "tenant 8 has no items to process" in refused.message
    assert batch_ids(batch_env) == [batch_id]


def test_a_run_names_its_tenant_and_a_row_of_another_tenant_is_refused(batch_env: BatchEnv) -> None:
    """tenant_id is required (the UI's form marks it so); with batch_id it must be the row's tenant."""
    from prefect.exceptions import ParameterBindError

    batch_env.seed({7: 3, 8: 3})
    row = batch_env.insert_pending(7, "account_check", {"account_ids": [700001]})

    with pytest.raises(ParameterBindError, match="tenant_id"):
        account_check(batch_id=row)
    refused = run(account_check(tenant_id=8, batch_id=row, return_state=True))

    assert refused.is_failed() and f"batch {row} belongs to tenant 7, not tenant 8" in refused.message
    assert batch_env.batch(row)["task_status"] == "pending" and batch_env.sim.stats()["total"] == 0
    assert run(account_check(tenant_id=7, batch_id=row, return_state=True)).is_completed()

def test_cli_exit_codes_and_one_line_errors(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 5})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.account_check", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = cli("--tenant-id", "7")
    assert ok.returncode == 0, ok.stderr
    assert "completed: 5/5 processed, 5 succeeded" in ok.stdout
    bad = cli("--tenant-id", "99")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: rejected: unknown tenant 99: it has no accounts"
    assert "Traceback" not in bad.stderr
    # --resume without --tenant-id takes the row's tenant; an unknown row is one line, exit 2.
    row = batch_env.insert_pending(7, "account_check", {"account_ids": [700001, 700002]})
    resumed = cli("--resume", str(row))
    assert resumed.returncode == 0 and f"batch {row} (account_check, tenant 7) completed" in resumed.stdout, resumed.stderr
    unknown = cli("--resume", "4242")
    assert unknown.returncode == 2 and unknown.stderr.strip() == "error: rejected: batch 4242 does not exist"
    usage = cli("--account-ids", "1,x")
    assert usage.returncode == 2 and "comma-separated integer ids" in usage.stderr
