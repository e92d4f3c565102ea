"""Retry only the failed items of a finished batch: a new batch row linked to the old one."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from flows.account_check import account_check
from flows.nickname_change import nickname_change
from tests.support.batch_env import BatchEnv, items_of

REPO = Path(__file__).resolve().parents[2]


def run(coro):
    return asyncio.run(coro)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` with this test's BATCH_* settings, against its Prefect API."""
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def failing_batch(env: BatchEnv, failing: int = 4) -> tuple[int, list[int]]:
    """A finished account_check batch of tenant 7 whose first ``failing`` accounts failed (HTTP 500)."""
    env.seed({7: 30})
    uids = [a["uid"] for a in env.sim.accounts(7)][:failing]
    env.sim.configure(fail_uids=uids)
    state = run(account_check(tenant_id=7, return_state=True))
    assert state.is_completed(), state.message
    batch_id = env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]
    failed = sorted(i for i, (status, _, _) in items_of(env, batch_id).items() if status == "failed")
    assert len(failed) == failing
    env.sim.configure(fail_uids=[])
    return batch_id, failed


def test_retry_runs_only_the_failed_items_in_a_new_linked_batch(batch_env: BatchEnv) -> None:
    first, failed = failing_batch(batch_env)
    errors_before = {i: e for i, (_, _, e) in items_of(batch_env, first).items() if i in failed}
    calls_before = batch_env.uid_calls()

    state = run(account_check(tenant_id=7, retry_failed_of=first, return_state=True))

    assert state.is_completed(), state.message
    second = batch_env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]
    assert second != first
    row = batch_env.batch(second)
    assert (row["tenant_id"], row["task_type"], row["task_status"]) == (7, "account_check", "completed")
    assert json.loads(row["task_data"]) == {"retry_failed_of": first, "items_count": len(failed)}
    assert (row["total_count"], row["success_count"], row["failed_count"]) == (len(failed), len(failed), 0)
    batch_env.assert_consistent(second)
    # Only the failed accounts were called again, once each.
    calls_after = batch_env.uid_calls()
    again = {i: calls_after[i] - calls_before.get(i, 0) for i in calls_after if calls_after[i] != calls_before.get(i, 0)}
    assert again == {i: 1 for i in failed}
    # Each retried item keeps its previous error; the old batch keeps its history.
    details = batch_env.sql("SELECT item_id, item_data FROM la_batch_task_detail WHERE task_id = :b", b=second)
    assert {d.item_id: json.loads(d.item_data)["previous_error"] for d in details} == errors_before
    assert all(errors_before.values())
    old = batch_env.batch(first)
    assert (old["task_status"], old["failed_count"]) == ("completed", len(failed))
    assert all(items_of(batch_env, first)[i][0] == "failed" for i in failed)


def test_a_panel_row_retries_a_batch(batch_env: BatchEnv) -> None:
    first, failed = failing_batch(batch_env, failing=2)
    row_id = batch_env.insert_pending(7, "account_check", {"retry_failed_of": first})

    state = run(account_check(tenant_id=7, batch_id=row_id, return_state=True))

    assert state.is_completed(), state.message
    row = batch_env.batch(row_id)
    assert (row["task_status"], row["total_count"], row["success_count"]) == ("completed", 2, 2)
    assert sorted(items_of(batch_env, row_id)) == failed
    batch_env.assert_consistent(row_id)


def test_retry_refusals_write_nothing(batch_env: BatchEnv) -> None:
    first, _ = failing_batch(batch_env, failing=1)
    state = run(account_check(tenant_id=7, retry_failed_of=first, return_state=True))
    assert state.is_completed(), state.message
    clean = batch_env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]
    rows_before = batch_env.sql("SELECT COUNT(*) FROM la_batch_task")[0][0]
    calls_before = batch_env.sim.stats()["total"]

    cases = [
        (account_check(tenant_id=7, retry_failed_of=clean, return_state=True), f"cannot retry batch {clean}: none of its items failed"),
        (account_check(tenant_id=7, retry_failed_of=9999, return_state=True), "cannot retry batch 9999: it does not exist"),
        (account_check(tenant_id=8, retry_failed_of=first, return_state=True),
         f"cannot retry batch {first}: it belongs to tenant 7, not tenant 8"),
        (nickname_change(tenant_id=7, retry_failed_of=first, return_state=True), "it is a account_check batch, not nickname_change"),
    ]
    for call, message in cases:
        refused = run(call)
        assert refused.is_failed() and refused.message.startswith("rejected: "), refused.message
        assert message in refused.message
    batch_env.sql("UPDATE la_batch_task SET task_status = 'running' WHERE id = :id", id=first)
    active = run(account_check(tenant_id=7, retry_failed_of=first, return_state=True))
    assert f"cannot retry batch {first}: it is still running" in active.message
    assert batch_env.sql("SELECT COUNT(*) FROM la_batch_task")[0][0] == rows_before
    assert batch_env.sim.stats()["total"] == calls_before


def test_cli_shows_why_items_failed_and_retries_them(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 6})
    batch_env.sim.configure(fail_uids=[batch_env.sim.accounts(7)[0]["uid"]])
    cli = functools.partial(run_module, "flows.account_check")

    first = cli("--tenant-id", "7")
    assert first.returncode == 0, first.stderr
    batch_id = batch_env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]
    assert "1 item(s) failed:" in first.stdout
    assert "  item 700001: " in first.stdout and "500" in first.stdout
    assert f"retry only those: python -m flows.account_check --retry-failed {batch_id}" in first.stdout
    batch_env.sim.configure(fail_uids=[])
    again = cli("--retry-failed", str(batch_id))
    assert again.returncode == 0, again.stderr
    assert "completed: 1/1 processed, 1 succeeded" in again.stdout
    refused = cli("--retry-failed", str(batch_id + 1))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: rejected: cannot retry batch {batch_id + 1}: none of its items failed"
    )
