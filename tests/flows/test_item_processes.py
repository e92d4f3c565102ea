"""Big batches handled by helper processes (BATCH_ITEM_PROCESSES): real MariaDB, Redis, the
platform simulator and real ``python -m batchlib.item_processes`` children of the run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

from batchlib.item_processes import ItemProcesses
from flows.account_check import account_check
from flows.nickname_change import nickname_change
from tests.support.batch_env import BatchEnv, items_of

HELPERS = dict(item_processes=2, item_processes_min_items=0, chunk_threshold=100, chunk_size=50)


def run(coro):
    return asyncio.run(coro)


def summary(state) -> dict:
    """The run's BatchSummary (the data of its final state)."""
    data = getattr(state.data, "result", state.data)  # a ResultRecord in a flow run's final state
    assert isinstance(data, dict), type(data)
    return data


def helper_pids() -> list[int]:
    """This test process's item-process children."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "batchlib.item_processes"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_big_account_check_runs_in_two_item_processes(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=20, **HELPERS)
    ids = batch_env.seed({7: 600, 8: 5}, banned_fraction=0.1, seed=5)
    batch_env.sim.expire(tenant_id=7)  # every stored access token is stale: each account refreshes once

    state = run(account_check(tenant_id=7, return_state=True))

    assert state.is_completed(), state.message
    assert summary(state)["mode"] == "chunks of 50, 2 item processes"
    batch_id = summary(state)["batch_id"]
    batch_env.assert_consistent(batch_id)
    details = items_of(batch_env, batch_id)
    tenant_7 = [i for i in ids if i // 100_000 == 7]
    assert sorted(details) == sorted(tenant_7) and all(s != "pending" for s, _, _ in details.values())
    banned = sum(1 for s, result, _ in details.values() if s == "success" and '"banned"' in (result or ""))
    assert banned > 0  # the helpers' outcomes are the handler's, results included
    calls = batch_env.uid_calls()
    assert set(calls) == set(tenant_7)
    assert all(n == 2 for n in calls.values())  # 401 with the stale token, then once with the refreshed one
    assert batch_env.sim.stats()["refreshes"] == 600  # one refresh per account across both processes
    assert helper_pids() == []  # the helpers exited with the run


def test_a_nickname_change_in_item_processes_applies_its_outcomes(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=10, **HELPERS)
    batch_env.seed({7: 150})
    items = [{"account_id": 700000 + n, "nickname": f"n{n}"} for n in range(1, 151)]

    state = run(nickname_change(tenant_id=7, items=items, return_state=True))

    assert state.is_completed(), state.message
    assert summary(state)["mode"] == "chunks of 50, 2 item processes"
    batch_env.assert_consistent(summary(state)["batch_id"])
    names = dict(batch_env.sql("SELECT id, nickname FROM la_alt_account WHERE tenant_id = 7"))
    assert all(names[700000 + n] == f"n{n}" for n in range(1, 151))  # apply ran in the helpers' mirrors


def test_the_panel_s_cancel_stops_every_helper_and_they_share_one_limit(batch_env: BatchEnv, configure) -> None:
    """The helpers' mirrors see the panel's cancel like the run's would: nothing more starts, the
    batch ends cancelled with counters equal to a recount; the platform never saw more than the
    (tenant, type) limit in flight across both helpers."""
    configure(concurrency=10, **HELPERS)
    batch_env.sim.configure(latency_ms=40)
    batch_env.seed({7: 800})

    batch_id, state = batch_env.cancel_from_panel(account_check(tenant_id=7, return_state=True), after=100)

    assert state.is_cancelled(), state.message
    batch_env.assert_consistent(batch_id)
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "cancelled" and 100 <= row["processed_count"] < 800, row
    assert batch_env.sim.stats()["max_in_flight_by_tenant"]["7"] <= 10
    # Every account called was recorded, but for at most the limit in flight at the end.
    assert len(batch_env.uid_calls()) <= row["processed_count"] + 10
    assert helper_pids() == []


def test_a_killed_item_process_stops_the_batch_and_a_resume_finishes_it(batch_env: BatchEnv, configure) -> None:
    """Items a dead helper was handling get no outcome: they stay pending, the run stops (failed,
    like a killed worker's batch), counters equal a recount, and a resume completes the batch."""
    configure(concurrency=10, **HELPERS)
    batch_env.sim.configure(latency_ms=40)
    batch_env.seed({7: 800})
    killed: list[int] = []

    def kill_one_helper_midway() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            done = batch_env.sql("SELECT COUNT(*) FROM la_batch_task_detail WHERE status <> 'pending'")[0][0]
            pids = helper_pids()
            if done >= 100 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_helper_midway)
    killer.start()
    state = run(account_check(tenant_id=7, return_state=True))
    killer.join()

    assert killed, "no helper process was seen"
    assert state.is_failed() and "an item process exited" in state.message, state.message
    batch_id = batch_env.sql("SELECT MAX(id) FROM la_batch_task")[0][0]
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed" and 100 <= row["processed_count"] < 800
    batch_env.assert_consistent(batch_id)
    assert helper_pids() == []  # the other helper was closed with the run

    resumed = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    batch_env.assert_consistent(batch_id)
    assert batch_env.batch(batch_id)["processed_count"] == 800
    # Each account ended in exactly one final state; only the dead helper's items in flight (its
    # share of the limit: 5) and those it had finished but not flushed yet (one flush interval,
    # 0.5 s at ~125 items/s) were called twice: what a killed worker's buffer loses too.
    calls = batch_env.uid_calls()
    assert len(calls) == 800 and sum(n - 1 for n in calls.values()) <= 5 + 75


def test_item_processes_that_do_not_start_leave_the_items_to_the_run(batch_env: BatchEnv, configure,
                                                                      monkeypatch) -> None:
    configure(concurrency=10, **HELPERS)
    batch_env.seed({7: 120})

    async def cannot_start(*args, **kwargs):
        raise RuntimeError("an item process did not start (exit code 1)")

    monkeypatch.setattr(ItemProcesses, "start", cannot_start)
    state = run(account_check(tenant_id=7, return_state=True))

    assert state.is_completed(), state.message
    assert summary(state)["mode"] == "chunks of 50"  # handled in the run's own loop
    batch_env.assert_consistent(summary(state)["batch_id"])
    assert len(batch_env.uid_calls()) == 120
