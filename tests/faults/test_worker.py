"""Worker faults: a worker SIGKILLed at ~30 %, and a worker paused (SIGSTOP) past its lease
while another run takes its batch over, then resumed (SIGCONT).

The worker is the real command line (``python -m flows.account_check``) in its own process
group, reporting to the session's Prefect server; the takeover and resume runs are in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from batchlib.locks import lease_key
from db import fail_stale_batches, run_transaction
from flows.account_check import account_check
from flows.batch_runner import batch_flow, run_batch_flow
from tests.support.faults import REPO, FaultEnv, run, subprocess_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]

FLUSH_S = 0.2


@batch_flow("account_check", name="account-check-takeover")
async def takeover_run(batch_id: int):
    """What an operator needs to take over a batch whose worker hangs: the flows have no
    ``takeover`` parameter yet, so the test drives the runner's ``takeover=True`` directly."""
    return await run_batch_flow("account_check", tenant_id=None, task_data=None, batch_id=batch_id, takeover=True)


class Worker:
    """``python -m flows.account_check`` in its own process group; output kept for the leak scan."""

    def __init__(self, tmp: Path, env: dict[str, str], *args: str) -> None:
        self.out, self.err = tmp / "worker.out", tmp / "worker.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.account_check", *args], cwd=REPO, env=env,
            stdout=self.out.open("wb"), stderr=self.err.open("wb"), start_new_session=True,
        )

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    @property
    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def wait_for_progress(env: FaultEnv, fraction: float, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = env.sql("SELECT id, processed_count, total_count FROM la_batch_task")
        if rows and rows[0].total_count and rows[0].processed_count >= fraction * rows[0].total_count:
            return rows[0].id
        time.sleep(0.05)
    raise AssertionError("the worker made no progress")


def done_items(env: FaultEnv, batch_id: int) -> set[int]:
    return {r.item_id for r in env.sql(
        "SELECT item_id FROM la_batch_task_detail WHERE task_id = :b AND status <> 'pending'", b=batch_id)}


def test_sigkill_at_30_percent_reaper_then_resume(fault_env: FaultEnv, tmp_path: Path, leak_check) -> None:
    """SIGKILL of the worker at ~30 % of 1,000 accounts. The reaper (window 3 s) leaves the live
    batch alone (0 reaped before the kill) and marks it failed within 2 windows (6 s) of the kill;
    the resume completes it: items recorded before the kill called exactly once, every re-called
    item was in flight or answered within 2 flush intervals before the kill, counters == recount."""
    fault_env.sim.configure(latency_ms=10)
    fault_env.seed_canaries({7: 1000})
    env = subprocess_env(concurrency=10, lock_ttl_s=2, heartbeat_interval_s=1, flush_interval_s=FLUSH_S)
    worker = Worker(tmp_path, env, "--tenant-id", "7")
    try:
        batch_id = wait_for_progress(fault_env, 0.3)
        reap = lambda: run_transaction(fault_env.engine, lambda s: fail_stale_batches(  # noqa: E731
            s, now=int(time.time()), stale_after_s=3, reason="no heartbeat for 3s: worker gone"))
        assert reap() == []  # a live batch is never reaped
        worker.signal(signal.SIGKILL)
        killed_at, killed_sim = time.monotonic(), fault_env.sim.stats()["now"]
        worker.wait(10)
    finally:
        worker.kill()
    done_before = done_items(fault_env, batch_id)
    assert 300 <= len(done_before) < 1000
    while not (reaped := reap()):
        assert time.monotonic() - killed_at < 2 * 3 + 1, "the reaper did not mark the batch in 2 windows"
        time.sleep(0.25)
    reaped_after = time.monotonic() - killed_at
    assert reaped == [batch_id] and reaped_after <= 2 * 3 + 1
    assert fault_env.batch(batch_id)["task_status"] == "failed"
    time.sleep(0.5)
    unflushed = {c["uid"] for c in fault_env.sim.calls() if c["end"] >= killed_sim - 2 * FLUSH_S}
    deadline = time.monotonic() + 5  # the dead worker's lease expires by its TTL (2 s)
    r = redis.Redis.from_url(fault_env.redis_url)
    while r.exists(lease_key(fault_env.redis_prefix, 7, "account_check")) and time.monotonic() < deadline:
        time.sleep(0.1)

    state = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_completed(), state.message
    fault_env.assert_invariants(batch_id, expect_total=1000)
    assert fault_env.batch(batch_id)["processed_count"] == 1000
    calls = fault_env.assert_calls_per_item(2)
    assert len(calls) == 1000 and all(calls[i] == 1 for i in done_before)
    redone = {f"u7-{i % 100000:06d}" for i, n in calls.items() if n == 2}
    assert redone <= unflushed, sorted(redone - unflushed)[:10]
    leak_check(fault_env, worker.output)


def test_paused_owner_is_fenced_out_after_a_takeover(fault_env: FaultEnv, tmp_path: Path, leak_check) -> None:
    """The worker is SIGSTOPped at ~30 % past its lease TTL (2 s); a takeover run claims the batch
    (fence +1) and completes it; then SIGCONT: the stale owner exits 1 ('taken over' / lease lost)
    and writes 0 rows (details, counters and fence identical before and after it woke), counters ==
    recount; items recorded before the pause called exactly once; the stale owner's platform calls
    after waking <= in flight (5) + one flush interval's worth (+0.1 s): 80."""
    fault_env.sim.configure(latency_ms=20)
    fault_env.seed_canaries({7: 600})
    env = subprocess_env(concurrency=5, lock_ttl_s=2, heartbeat_interval_s=1, flush_interval_s=FLUSH_S)
    worker = Worker(tmp_path, env, "--tenant-id", "7")
    key = lease_key(fault_env.redis_prefix, 7, "account_check")
    r = redis.Redis.from_url(fault_env.redis_url)
    try:
        batch_id = wait_for_progress(fault_env, 0.3)
        worker.signal(signal.SIGSTOP)
        paused_at = fault_env.sim.stats()["now"]
        time.sleep(0.3)  # let its last in-flight answers land
        fence_before = fault_env.fence(batch_id)
        done_before = done_items(fault_env, batch_id)
        deadline = time.monotonic() + 10
        while r.exists(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not r.exists(key), "the paused owner's lease did not expire"

        state = run(takeover_run(batch_id=batch_id, return_state=True))

        assert state.is_completed(), state.message
        assert fault_env.fence(batch_id) == fence_before + 1
        snapshot = (fault_env.batch(batch_id), fault_env.details(batch_id), fault_env.fence(batch_id))
        woke_at = fault_env.sim.stats()["now"]
        worker.signal(signal.SIGCONT)
        code = worker.wait(60)
    finally:
        worker.kill()

    assert code == 1
    assert "taken over" in worker.output or "was lost" in worker.output
    after = (fault_env.batch(batch_id), fault_env.details(batch_id), fault_env.fence(batch_id))
    assert after == snapshot  # 0 rows written by the stale owner
    assert after[0]["task_status"] == "completed"
    fault_env.assert_invariants(batch_id, expect_total=600)
    # An item in flight at the pause: the stale owner's call, its one retry when that call's
    # deadline passed during the pause (it is woken by SIGCONT before it sees the fence), and
    # the new owner's call. Items recorded before the pause: exactly once.
    calls = fault_env.assert_calls_per_item(3)
    assert all(calls[i] == 1 for i in done_before)
    stale_calls = fault_env.sim.calls(since=woke_at)
    # in flight (5) + what 5 slots at 20 ms answer in one flush interval and 0.1 s of slack: 80
    assert len(stale_calls) <= 5 + 5 / 0.020 * (FLUSH_S + 0.1), len(stale_calls)
    assert paused_at < woke_at
    leak_check(fault_env, worker.output)
