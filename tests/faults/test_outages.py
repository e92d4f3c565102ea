"""Server outages: MariaDB stopped mid-batch (10 s, and longer than the outage budget), held row
locks past innodb_lock_wait_timeout, Redis restarted mid-batch and down at the start.

These stop servers, so they use private instances on free ports (a throwaway mariadbd with its
own datadir, a redis-server without persistence): the shared servers other tests use never go
down. Every stop is undone in a ``finally``. The module runs in any order: its servers are its
own, every setting is a monkeypatch, and its engines are disposed.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from db import fail_stale_batches, run_transaction
from flows.account_check import account_check
from tests.support.faults import FaultEnv, PrivateMariaDB, PrivateRedis, at_progress, make_fault_env, run

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANTS = {7: 1000, 8: 1000}


@pytest.fixture
def outage_env(prefect_api, private_mariadb: PrivateMariaDB, redis_url: str, redis_prefix: str, canary: str,
               monkeypatch) -> FaultEnv:
    """Like fault_env, on the private MariaDB (which the test may stop); always up again after."""
    url = private_mariadb.new_database()
    try:
        yield from make_fault_env(monkeypatch, canary, url, redis_url, redis_prefix)
    finally:
        private_mariadb.ensure_up()


async def both_tenants():
    return await asyncio.gather(*(account_check(tenant_id=t, return_state=True) for t in TENANTS))


def test_mariadb_stopped_10s_mid_batch(outage_env: FaultEnv, private_mariadb: PrivateMariaDB, configure,
                                       leak_check) -> None:
    """MariaDB is shut down at ~30 % and started 10 s later (outage budget 60 s): both batches
    complete, 2,000 successes, counters == recount, 0 items called twice, 0 tokens leaked."""
    configure(concurrency=10)
    outage_env.sim.configure(latency_ms=10)
    outage_env.seed_canaries(TENANTS)
    down = {}

    def outage() -> None:
        private_mariadb.stop()
        down["at"] = time.monotonic()
        time.sleep(10)
        private_mariadb.start()
        down["for"] = time.monotonic() - down["at"]

    async def scenario():
        return (await asyncio.gather(both_tenants(), at_progress(outage_env, 0.3, outage, min_total=2000)))[0]

    try:
        states = run(scenario())
    finally:
        private_mariadb.ensure_up()

    assert down["for"] >= 10
    outage_env.assert_all_complete(states)
    leak_check(outage_env)


def test_lock_wait_timeouts_are_retried(outage_env: FaultEnv, private_mariadb: PrivateMariaDB, configure,
                                        all_logs, leak_check) -> None:
    """innodb_lock_wait_timeout=2 and a session holding the la_batch_run and la_batch_task row
    locks for 5 s at ~30 %: >= 1 lock wait timeout (1205) retried, both batches complete,
    counters == recount, 0 items called twice."""
    configure(concurrency=10)
    outage_env.sim.configure(latency_ms=10)
    outage_env.seed_canaries(TENANTS)
    admin = private_mariadb.admin()
    with admin.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.innodb_lock_wait_timeout")
        (before,) = cur.fetchone()
        cur.execute("SET GLOBAL innodb_lock_wait_timeout = 2")
    outage_env.engine.dispose()  # new connections see the new global
    held = {}

    def hold_locks() -> None:
        blocker = private_mariadb.admin()
        try:
            with blocker.cursor() as cur:
                cur.execute(f"USE `{outage_env.db_name}`")
                cur.execute("BEGIN")
                cur.execute("SELECT * FROM la_batch_run FOR UPDATE")
                cur.execute("SELECT id FROM la_batch_task FOR UPDATE")
                held["rows"] = cur.rowcount
                time.sleep(5)
                cur.execute("COMMIT")
        finally:
            blocker.close()

    async def scenario():
        return (await asyncio.gather(both_tenants(), at_progress(outage_env, 0.3, hold_locks, min_total=2000)))[0]

    try:
        states = run(scenario())
    finally:
        with admin.cursor() as cur:
            cur.execute(f"SET GLOBAL innodb_lock_wait_timeout = {int(before)}")
        admin.close()

    assert held["rows"] == 2
    assert all_logs.count("OperationalError 1205") >= 1
    outage_env.assert_all_complete(states)
    leak_check(outage_env)


def test_mariadb_down_past_the_outage_budget(outage_env: FaultEnv, private_mariadb: PrivateMariaDB, configure,
                                             leak_check) -> None:
    """Budget 3 s; MariaDB stopped at ~30 % of a 1,000-account batch and kept down until the flow
    run has returned: the run ends Failed('stopped: the database was unreachable for 3s...') within budget + 15 s, no platform
    call after it returned; once MariaDB is back the reaper (3 s window) marks the batch failed at its
    first pass, and the resume completes it: items recorded before the outage called exactly once,
    re-called items <= those answered within 2 flush intervals before the stop or while it was down."""
    configure(concurrency=10, db_outage_budget_s=3, heartbeat_interval_s=1)
    outage_env.sim.configure(latency_ms=10)
    outage_env.seed_canaries({7: 1000})
    marks: dict[str, object] = {}

    async def scenario():
        flow = asyncio.create_task(account_check(tenant_id=7, return_state=True))

        def stop() -> None:
            marks["done_before"] = {r.item_id for r in outage_env.sql(
                "SELECT item_id FROM la_batch_task_detail WHERE status <> 'pending'")}
            marks["batch_id"] = outage_env.batch_ids()[0]
            marks["stopping"] = outage_env.sim.stats()["now"]
            private_mariadb.stop()

        await at_progress(outage_env, 0.3, stop, min_total=1000)
        started = time.monotonic()
        state = await flow
        marks["returned_after"] = time.monotonic() - started
        marks["returned"] = outage_env.sim.stats()["now"]
        return state

    try:
        state = run(scenario())
        time.sleep(0.5)
        calls_after_return = len(outage_env.sim.calls(since=marks["returned"]))
    finally:
        private_mariadb.ensure_up()

    assert state.is_failed() and state.message.startswith("stopped: the database was unreachable for 3s"), state.message
    assert marks["returned_after"] < 3 + 15
    assert calls_after_return == 0
    batch_id = marks["batch_id"]
    assert outage_env.batch(batch_id)["task_status"] == "running"  # nobody could write it
    time.sleep(2)  # past the reaper's window (heartbeats are whole seconds)
    reaped = run_transaction(outage_env.engine, lambda s: fail_stale_batches(
        s, now=int(time.time()), stale_after_s=3, reason="no heartbeat: worker gone"))
    assert reaped == [batch_id]
    # Unrecorded when the database went: what was answered since the last flush (<= 2 flush
    # intervals: one between flushes, one for the flush's own transaction) and during the outage.
    unflushed = {c["uid"] for c in outage_env.sim.calls() if c["end"] >= marks["stopping"] - 2 * 0.2}

    resumed = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    outage_env.assert_invariants(batch_id, expect_total=1000)
    calls = outage_env.assert_calls_per_item(2)
    assert all(calls[i] == 1 for i in marks["done_before"])
    redone = [i for i, n in calls.items() if n == 2]
    assert len(redone) <= len(unflushed)
    assert len(calls) == 1000
    leak_check(outage_env)


# -- Redis -------------------------------------------------------------------------------------


def test_redis_restarted_mid_batch_without_persistence(outage_env: FaultEnv, private_redis: PrivateRedis,
                                                       configure, leak_check) -> None:
    """Lease TTL 1.5 s; Redis shut down (nosave) at ~30 % and started 1 s later with no keys: both
    batches complete, 2,000 successes, 0 items called twice, counters == recount, no lease key left."""
    configure(redis_url=private_redis.url, lock_ttl_s=1.5, concurrency=10)
    outage_env.redis_url = private_redis.url
    outage_env.sim.configure(latency_ms=10)
    outage_env.seed_canaries(TENANTS)
    restarted = threading.Event()

    def restart() -> None:
        private_redis.stop()
        time.sleep(1)
        private_redis.start()
        restarted.set()

    async def scenario():
        return (await asyncio.gather(both_tenants(), at_progress(outage_env, 0.3, restart, min_total=2000)))[0]

    states = run(scenario())

    assert restarted.is_set()
    outage_env.assert_all_complete(states)
    leak_check(outage_env)


def test_redis_down_when_batches_start(outage_env: FaultEnv, private_redis: PrivateRedis, configure,
                                       leak_check) -> None:
    """Redis is down: two runs for tenant 7 and one for tenant 8 start together; the database guard
    alone lets exactly 1 batch per tenant run (1 refusal: 'already pending or running'), 2 batches
    complete, 0 items called twice."""
    configure(redis_url=private_redis.url)
    outage_env.redis_url = private_redis.url
    outage_env.sim.configure(latency_ms=10)
    outage_env.seed_canaries({7: 500, 8: 500})
    private_redis.stop()
    try:
        async def scenario():
            return await asyncio.gather(
                account_check(tenant_id=7, return_state=True), account_check(tenant_id=7, return_state=True),
                account_check(tenant_id=8, return_state=True),
            )

        states = run(scenario())
    finally:
        private_redis.start()

    refused = [s for s in states if s.is_failed()]
    assert len(refused) == 1 and "another account_check batch of tenant 7 is already" in refused[0].message
    assert sum(s.is_completed() for s in states) == 2
    ids = outage_env.batch_ids()
    assert len(ids) == 2
    for batch_id in ids:
        outage_env.assert_invariants(batch_id, expect_total=500)
    assert len(outage_env.assert_calls_per_item(1)) == 1000
    leak_check(outage_env)
