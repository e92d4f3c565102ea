"""The platform-wide cap and a tenant's total: limits shared by batches, in Prefect and Redis.

A real Prefect server, real Redis, the platform simulator counting calls in flight (for all
tenants and per tenant), account-check flows in this process; the operator's side is the
Prefect client, as the UI and ``prefect gcl update`` use it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from batchlib.settings import get_settings
from deployments.local_server import free_port
from flows.account_check import account_check
from simulators.account_platform import PlatformSimulator
from tasks.limits import LimitFollower
from tests.flows.test_limits import create_limit, read_limit, set_limit
from tests.support.batch_env import BatchEnv

POLL_S = 1.0
BEAT_S = 0.5


def test_ten_tenants_share_a_platform_cap_of_200_evenly_and_never_exceed_it(batch_env: BatchEnv, configure) -> None:
    """Ten batches' limits, each fed as fast as its limiter lets it: plain HTTP calls to a
    simulator in its own process instead of task runs, so that the cap binds and not this
    process's CPU (ten account-check flows in one test process on the shared 2-core machine
    stalled its event loop for seconds, and the heartbeats with it). Long calls (2 s) and a
    slow poll keep this process's work low. Asserted: the simulator's peaks and the blocks
    granted, not calls per second (docs/concurrency.md says why)."""
    LATENCY_S = 2.0
    configure(concurrency=50, platform_max_in_flight=200, limit_poll_s=5, share_heartbeat_s=BEAT_S)
    tenants = list(range(1, 11))
    logger = logging.getLogger("test.shared")

    async def feed(follower: LimitFollower, http: httpx.AsyncClient, tokens: list[str], stop: asyncio.Event) -> None:
        running: set[asyncio.Task] = set()
        n = 0

        async def call(token: str) -> None:
            try:
                response = await http.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 200, response.text
            finally:
                follower.limiter.release()

        while not stop.is_set():
            await follower.limiter.acquire()
            task = asyncio.create_task(call(tokens[n % len(tokens)]))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
        await asyncio.gather(*running)

    async def scenario(sim: PlatformSimulator) -> tuple[float, float]:
        tokens = {t: [a["access_token"] for a in sim.accounts(t)] for t in tenants}
        followers = [LimitFollower(t, "account_check", get_settings(), logger) for t in tenants]
        await asyncio.gather(*(f.start() for f in followers))
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(base_url=sim.url, limits=limits, timeout=60) as http:
            feeds = [asyncio.create_task(feed(f, http, tokens[f.tenant_id], stop)) for f in followers]
            # The first batches start at their C; the others get their share as those shrink,
            # within a few heartbeats (later on a starved event loop). Measure from then on.
            deadline = time.monotonic() + 120
            while not all(f.limiter.size == 20 for f in followers):
                assert time.monotonic() < deadline, [f.limiter.size for f in followers]
                await asyncio.sleep(0.1)
            start = time.monotonic() + LATENCY_S + 0.5  # the calls started before the last resize have ended
            while time.monotonic() < start + 12:
                sizes.append([f.limiter.size for f in followers])
                await asyncio.sleep(0.1)
            end = time.monotonic()
            stop.set()
            for f in followers:
                f.limiter.open()  # a feed waiting for a slot sees the stop
            await asyncio.gather(*feeds)
        for f in followers:
            await f.close()
        return start, end

    sizes: list[list[int]] = []  # every follower's block, sampled through the measured stretch
    with PlatformSimulator(subprocess=True, latency_ms=LATENCY_S * 1000) as sim:
        sim.seed({t: 60 for t in tenants})
        asyncio.run(scenario(sim))
        stats = sim.stats()

    assert stats["max_in_flight"] <= 200, stats["max_in_flight"]  # the cap, across all tenants, all along
    assert stats["max_in_flight"] >= 150, stats["max_in_flight"]  # and it bound (ten tenants' C: 500)
    assert max(stats["max_in_flight_by_tenant"].values()) <= 50  # each tenant's own C still holds
    # Each tenant's share of the cap in that stretch: the block it was granted (sampled), equal
    # within 20 % and never more than the cap in total. (Its calls per second are not asserted:
    # on the loaded shared machine this process could not drive 100 calls/s, and a count of
    # calls measured its CPU, not the cap. docs/concurrency.md has the figures.)
    assert all(sum(row) <= 200 for row in sizes), max(map(sum, sizes))
    granted = [sum(row[i] for row in sizes) / len(sizes) for i in range(len(tenants))]
    assert all(abs(g - 20) <= 4 for g in granted), granted
    assert len(sizes) >= 10
    assert asyncio.run(read_limit("batch:platform")).limit == 200  # created with the setting, for operators


def test_an_operator_lowers_the_platform_cap_and_a_tenant_total_while_batches_run(
    batch_env: BatchEnv, configure
) -> None:
    configure(concurrency=30, limit_poll_s=POLL_S, share_heartbeat_s=BEAT_S)
    batch_env.sim.configure(latency_ms=200)
    batch_env.seed({7: 3000, 8: 3000})
    asyncio.run(create_limit("batch:platform", 40))  # created by an operator: no setting needed
    drain = POLL_S + 3 * BEAT_S + 2 * 0.2 + 0.5

    async def in_flight() -> dict:
        return await asyncio.to_thread(batch_env.sim.stats)

    async def sample(seconds: float) -> list[dict]:
        seen, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(await in_flight())
            await asyncio.sleep(0.05)
        return seen

    async def scenario():
        flows = [asyncio.create_task(account_check(tenant_id=t, return_state=True)) for t in (7, 8)]
        deadline = time.monotonic() + 60
        while len((await in_flight())["in_flight_by_tenant"]) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(drain)
        shared = await sample(1.5)
        shown = (await read_limit("batch:platform")).active_slots

        await set_limit("batch:platform", limit=10)
        await asyncio.sleep(drain)
        lowered = await sample(1.5)

        await create_limit("batch:7", 2)  # tenant 7's total, across its types
        await asyncio.sleep(drain)
        tenant_capped = await sample(1.5)

        await set_limit("batch:platform", active=False)
        await asyncio.sleep(drain)
        paused = await sample(1.0)
        assert not any(f.done() for f in flows)

        await set_limit("batch:platform", active=True, limit=100)
        for f in flows:
            f.cancel()
        await asyncio.gather(*flows, return_exceptions=True)
        return shared, shown, lowered, tenant_capped, paused

    shared, shown, lowered, tenant_capped, paused = asyncio.run(scenario())

    def by_tenant(samples, t):
        return [s["in_flight_by_tenant"].get(str(t), 0) for s in samples]

    assert max(s["in_flight"] for s in shared) <= 40 and max(s["in_flight"] for s in shared) >= 30
    assert max(by_tenant(shared, 7)) <= 20 and max(by_tenant(shared, 8)) <= 20  # 20 each
    assert 1 <= shown <= 40  # the Concurrency page shows the platform's calls in flight
    assert max(s["in_flight"] for s in lowered) <= 10
    assert max(by_tenant(lowered, 7)) <= 5 and max(by_tenant(lowered, 8)) <= 5
    assert max(by_tenant(tenant_capped, 7)) <= 2
    assert max(by_tenant(tenant_capped, 8)) >= 6  # what tenant 7 cannot use goes to tenant 8
    assert max(s["in_flight"] for s in paused) == 0  # an inactive platform limit pauses every batch


def test_with_redis_down_each_batch_keeps_to_a_per_process_cap(
    batch_env: BatchEnv, configure, caplog: pytest.LogCaptureFixture
) -> None:
    configure(
        concurrency=50, platform_max_in_flight=30, platform_fallback_in_flight=12, tenant_max_in_flight='{"8": 5}',
        redis_url=f"redis://127.0.0.1:{free_port()}/0", limit_poll_s=0.2, share_heartbeat_s=0.1,
    )
    logger = logging.getLogger("test.shared")

    async def follow() -> tuple[list[int], list[int]]:
        followers = [LimitFollower(t, "account_check", get_settings(), logger) for t in (7, 8)]
        sizes = [await f.start() for f in followers]
        await asyncio.sleep(1.0)  # several failed heartbeats
        later = [f.limiter.size for f in followers]
        for f in followers:
            await f.close()
        return sizes, later

    with caplog.at_level(logging.INFO, logger="test.shared"):
        sizes, later = asyncio.run(follow())

    assert sizes == later == [12, 5]  # never unlimited, never more than the tenant's total
    lines = [r.getMessage() for r in caplog.records if r.name == "test.shared"]
    assert len(lines) == 2 and all("Redis unavailable" in line for line in lines), lines
    assert "batch:platform" in lines[0] and "per-process cap of 12" in lines[0]
    assert "batch:8, batch:platform" in lines[1] and "per-process cap of 5" in lines[1]


def test_a_tenant_total_bounds_its_batches_of_every_type_and_shows_their_sum(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=50, tenant_max_in_flight='{"7": 30}', limit_poll_s=0.5, share_heartbeat_s=0.2)
    logger = logging.getLogger("test.shared")

    async def scenario():
        check = LimitFollower(7, "account_check", get_settings(), logger)
        rename = LimitFollower(7, "nickname_change", get_settings(), logger)
        other = LimitFollower(8, "account_check", get_settings(), logger)  # another tenant: no total
        for f in (check, rename, other):
            await f.start()
        deadline = time.monotonic() + 60
        while (check.limiter.size, rename.limiter.size) != (15, 15):
            assert time.monotonic() < deadline, (check.limiter, rename.limiter)
            await asyncio.sleep(0.1)
        for _ in range(12):  # calls in flight: 12 + 3 of tenant 7
            await check.limiter.acquire()
        for _ in range(3):
            await rename.limiter.acquire()
        while (await read_limit("batch:7")).active_slots != 15:
            assert time.monotonic() < deadline, "the tenant's total in flight never showed"
            await asyncio.sleep(0.2)
        for _ in range(12):
            check.limiter.release()
        for _ in range(3):
            rename.limiter.release()
        await set_limit("batch:7", limit=10)  # the operator lowers the tenant's total
        while (check.limiter.size, rename.limiter.size) != (5, 5):
            assert time.monotonic() < deadline, (check.limiter, rename.limiter)
            await asyncio.sleep(0.1)
        sizes = (check.limiter.size, rename.limiter.size, other.limiter.size)
        await check.close()  # the other batch of the tenant may use the whole total now
        while rename.limiter.size != 10:
            assert time.monotonic() < deadline, rename.limiter
            await asyncio.sleep(0.1)
        await rename.close()
        await other.close()
        return sizes

    assert asyncio.run(scenario()) == (5, 5, 50)
    created = asyncio.run(read_limit("batch:7"))
    assert (created.limit, created.active, created.active_slots) == (10, True, 0)  # the last batch showed 0
