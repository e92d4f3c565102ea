"""The (tenant, type) limits as Prefect global concurrency limits, changed while batches run.

A real Prefect server, the platform simulator's per-tenant in-flight count, account-check
flows in this process. The operator's side is the Prefect client, as the UI and
``prefect gcl update`` use it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)

from batchcore.settings import get_settings
from deployments.local_server import free_port
from flows.account_check import account_check
from tasks.limits import LimitFollower
from tests.support.batch_env import BatchEnv

POLL_S = 1.0
LATENCY_S = 0.2
DRAIN_S = 2 * LATENCY_S + 0.5  # calls in flight when the limit changed finish, with slack for a busy CPU


async def set_limit(name: str, **fields) -> None:
    async with get_client() as client:
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(**fields))


async def create_limit(name: str, limit: int, active: bool = True) -> None:
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, active=active)
        )


async def read_limit(name: str):
    async with get_client() as client:
        return await client.read_global_concurrency_limit_by_name(name)


class InFlight:
    """The simulator's calls in flight for one tenant, read off the event loop."""

    def __init__(self, env: BatchEnv, tenant_id: int) -> None:
        self.env, self.tenant = env, str(tenant_id)

    async def now(self) -> int:
        stats = await asyncio.to_thread(self.env.sim.stats)
        return stats.get("in_flight_by_tenant", {}).get(self.tenant, 0)

    async def sample(self, seconds: float) -> list[int]:
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(await self.now())
            await asyncio.sleep(0.05)
        return seen

    async def until(self, check, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = await self.now()
            if check(n):
                return n
            await asyncio.sleep(0.05)
        pytest.fail(f"in-flight for tenant {self.tenant} never satisfied the check within {timeout}s")


@pytest.mark.parametrize("item_processes", [0, 2], ids=["in-the-run", "in-item-processes"])
def test_an_operator_lowers_raises_pauses_and_resumes_a_running_batch(batch_env: BatchEnv, configure,
                                                                      item_processes: int) -> None:
    """Also with the items in two helper processes: they share the one limit (split and re-sent
    when it changes), and the slots they hold show in Prefect."""
    configure(concurrency=50, limit_poll_s=POLL_S, item_processes=item_processes, item_processes_min_items=0)
    batch_env.sim.configure(latency_ms=LATENCY_S * 1000)
    batch_env.seed({7: 2500})
    name = "batch:7:account_check"
    tenant = InFlight(batch_env, 7)

    async def scenario():
        flow = asyncio.create_task(account_check(tenant_id=7, return_state=True))
        await tenant.until(lambda n: n >= 40, timeout=60)  # created with the default, running at it
        created = await read_limit(name)
        assert (created.limit, created.active) == (50, True)
        deadline = time.monotonic() + POLL_S + 3
        while (await read_limit(name)).active_slots < 30:  # the UI shows the slots in use
            assert time.monotonic() < deadline, "the slots in use never reached the limit's active_slots"
            await asyncio.sleep(0.2)

        await set_limit(name, limit=5)
        await asyncio.sleep(POLL_S + DRAIN_S)
        lowered = await tenant.sample(2.0)
        assert max(lowered) <= 5, lowered
        assert max(lowered) >= 3, lowered  # still running, at the new limit

        await set_limit(name, limit=50)
        await tenant.until(lambda n: n >= 30, timeout=POLL_S + DRAIN_S + 2)

        await set_limit(name, active=False)
        await asyncio.sleep(POLL_S + DRAIN_S)
        calls_paused = (await asyncio.to_thread(batch_env.sim.stats))["total"]
        paused = await tenant.sample(1.5)
        assert max(paused) == 0, paused
        assert (await asyncio.to_thread(batch_env.sim.stats))["total"] == calls_paused  # no new call
        assert not flow.done()  # paused, not failed

        await set_limit(name, active=True)
        await tenant.until(lambda n: n > 0, timeout=POLL_S + DRAIN_S + 2)
        return await flow

    state = asyncio.run(scenario())

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    row = batch_env.batch(batch_id)
    assert (row["task_status"], row["processed_count"], row["success_count"]) == ("completed", 2500, 2500)
    batch_env.assert_consistent(batch_id)
    assert len(batch_env.uid_calls()) == 2500 and set(batch_env.uid_calls().values()) == {1}
    assert asyncio.run(read_limit(name)).active_slots == 0  # the finished batch holds nothing


def test_two_tenants_with_different_limits_side_by_side(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=20, concurrency_per_tenant='{"8": 6}', limit_poll_s=POLL_S)
    batch_env.sim.configure(latency_ms=50)
    batch_env.seed({7: 150, 8: 150})
    asyncio.run(create_limit("batch:7:account_check", 3))  # an operator throttled tenant 7 earlier

    async def both():
        return await asyncio.gather(
            account_check(tenant_id=7, return_state=True), account_check(tenant_id=8, return_state=True)
        )

    states = asyncio.run(both())

    assert all(s.is_completed() for s in states), [s.message for s in states]
    peaks = batch_env.sim.stats()["max_in_flight_by_tenant"]
    assert peaks["7"] == 3 and 4 <= peaks["8"] <= 6, peaks
    created = asyncio.run(read_limit("batch:8:account_check"))  # first use: the configured default
    assert (created.limit, created.active, created.active_slots) == (6, True, 0)
    assert asyncio.run(read_limit("batch:7:account_check")).limit == 3  # the operator's value stays


def test_a_batch_of_a_paused_tenant_waits_and_can_be_cancelled(batch_env: BatchEnv, configure) -> None:
    configure(limit_poll_s=POLL_S, heartbeat_interval_s=0.5)
    batch_env.seed({7: 50})
    asyncio.run(create_limit("batch:7:account_check", 10, active=False))

    async def start_then_cancel():
        flow = asyncio.create_task(account_check(tenant_id=7, return_state=True))
        while True:
            rows = batch_env.sql("SELECT id, task_status FROM la_batch_task")
            if rows and rows[0].task_status == "running":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2 * POLL_S)
        assert not flow.done()
        beat = batch_env.sql("SELECT heartbeat_time FROM la_batch_run WHERE task_id = :b", b=rows[0].id)[0][0]
        await asyncio.sleep(1.5)
        assert batch_env.sql("SELECT heartbeat_time FROM la_batch_run WHERE task_id = :b", b=rows[0].id)[0][0] > beat
        batch_env.sql("UPDATE la_batch_task SET task_status='cancelled' WHERE id=:id", id=rows[0].id)
        return rows[0].id, await asyncio.wait_for(flow, 30)

    batch_id, state = asyncio.run(start_then_cancel())

    assert state.is_cancelled(), state.message
    assert batch_env.sim.stats()["total"] == 0  # paused from the start: no platform call
    assert batch_env.batch(batch_id)["processed_count"] == 0
    batch_env.assert_consistent(batch_id)


@pytest.mark.parametrize("api", ["unreachable", "not-a-prefect-api"])
def test_without_a_working_prefect_api_the_configured_default_holds(
    api: str, batch_env: BatchEnv, configure, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configure(concurrency_per_tenant='{"7": 7}', limit_poll_s=0.1, limit_api_timeout_s=1)
    url = f"http://127.0.0.1:{free_port()}/api" if api == "unreachable" else batch_env.sim.url + "/api"
    logger = logging.getLogger("test.limits")

    async def follow() -> tuple[int, int]:
        follower = LimitFollower(7, "account_check", get_settings(), logger)
        size = await follower.start()
        await asyncio.sleep(1.0)  # several failed polls
        await follower.close()
        return size, follower.limiter.size

    with caplog.at_level(logging.INFO, logger="test.limits"), temporary_settings({PREFECT_API_URL: url}):
        sizes = asyncio.run(follow())

    assert sizes == (7, 7)  # the default, never unlimited
    lines = [r.getMessage() for r in caplog.records if r.name == "test.limits"]
    assert lines == [
        "concurrency limit batch:7:account_check: Prefect API unavailable, using the configured default of 7"
    ]
