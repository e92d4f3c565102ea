"""Blocks of shared slots in a real Redis: the fair split, the cap held, a dead member's lease."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis.asyncio

from batchlib.fair_share import Pool, SharedSlots

ROOT = Path(__file__).resolve().parents[2]


def members(url: str, prefix: str, n: int, lease_s: float = 10) -> tuple[redis.asyncio.Redis, list[SharedSlots]]:
    client = redis.asyncio.Redis.from_url(url)
    return client, [SharedSlots(client, prefix, f"m{i}", lease_s=lease_s) for i in range(n)]


def test_ten_tenants_under_a_cap_of_200_converge_to_20_each_and_never_hold_more(redis_url, redis_prefix) -> None:
    async def scenario():
        client, ms = members(redis_url, redis_prefix, 10)
        sizes = [0] * 10
        rounds = []
        for _ in range(4):  # each renews in turn, holding the block it was granted before
            for i, m in enumerate(ms):
                (grant,) = await m.renew([Pool("platform", 200, f"t{i}")], demand=50, in_use=sizes[i], holding=sizes[i])
                sizes[i] = grant.slots
                assert sum(sizes) <= 200, sizes
            rounds.append(list(sizes))
        await client.aclose()
        return rounds

    rounds = asyncio.run(scenario())

    assert rounds[0] == [50, 50, 50, 50, 0, 0, 0, 0, 0, 0]  # first come, until the others shrink
    assert rounds[-1] == [20] * 10


def test_what_one_does_not_use_goes_to_the_others_and_a_tenant_alone_takes_all_up_to_its_c(
    redis_url, redis_prefix
) -> None:
    async def scenario():
        client, (a, b, c) = members(redis_url, redis_prefix, 3)
        alone = await a.renew([Pool("platform", 200, "7")], demand=50, in_use=0, holding=0)
        big = await a.renew([Pool("platform", 40, "7")], demand=50, in_use=0, holding=0)
        await a.renew([Pool("platform", 40, "7")], demand=50, in_use=0, holding=0)
        for _ in range(2):
            small = await b.renew([Pool("platform", 40, "8")], demand=5, in_use=0, holding=0)
            same_tenant = await c.renew([Pool("platform", 40, "7")], demand=50, in_use=0, holding=0)
            again = await a.renew([Pool("platform", 40, "7")], demand=50, in_use=0, holding=0)
        await client.aclose()
        return alone, big, small, same_tenant, again

    alone, big, small, same_tenant, again = asyncio.run(scenario())

    assert alone[0].slots == 50 and big[0].slots == 40  # alone: its own C, then the whole cap
    assert small[0].slots == 5  # tenant 8 asks for 5 only
    assert sorted([same_tenant[0].share, again[0].share]) == [17, 18]  # tenant 7's 35 split between its two batches
    assert (again[0].groups, again[0].members) == (2, 3)


def test_a_tenant_pool_bounds_the_platform_demand_and_reports_the_calls_in_flight(redis_url, redis_prefix) -> None:
    async def scenario():
        client, (a, b) = members(redis_url, redis_prefix, 2)
        size_a = size_b = 0
        for _ in range(3):  # each holds the block it was granted before
            ga = await a.renew([Pool("tenant:7", 30, ""), Pool("platform", 200, "7")], demand=50, in_use=4, holding=size_a)
            gb = await b.renew([Pool("tenant:7", 30, ""), Pool("platform", 200, "7")], demand=50, in_use=6, holding=size_b)
            size_a, size_b = ga[0].slots, gb[0].slots
        await client.aclose()
        return ga, gb

    (ta, pa), (tb, pb) = asyncio.run(scenario())

    assert (ta.slots, tb.slots) == (15, 15)
    assert (pa.share, pb.share) == (15, 15)  # the platform demand is the tenant share, not C
    assert ta.in_use == tb.in_use == 10 and ta.members == 2
    assert [ta.publisher, tb.publisher] == [True, False]  # one member shows the total to operators


def test_a_killed_process_s_block_comes_back_when_its_lease_runs_out(redis_url, redis_prefix) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url, redis_prefix],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "holding 200"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()

    async def scenario():
        client, (me,) = members(redis_url, redis_prefix, 1)
        (before,) = await me.renew([Pool("platform", 200, "8")], demand=50, in_use=0, holding=0)
        start, after = time.monotonic(), before
        while after.slots == 0 and time.monotonic() - start < 10:
            await asyncio.sleep(0.1)
            (after,) = await me.renew([Pool("platform", 200, "8")], demand=50, in_use=0, holding=0)
        await client.aclose()
        return before, after

    before, after = asyncio.run(scenario())

    assert (before.slots, before.members) == (0, 2)  # the dead holder's block still counts
    assert (after.slots, after.members) == (50, 1)  # its lease (2 s) ran out: dropped, slots back


def test_leaving_gives_the_block_back_at_once(redis_url, redis_prefix) -> None:
    async def scenario():
        client, (a, b) = members(redis_url, redis_prefix, 2)
        await a.renew([Pool("platform", 10, "7")], demand=10, in_use=0, holding=10)
        (blocked,) = await b.renew([Pool("platform", 10, "8")], demand=10, in_use=0, holding=0)
        await a.leave()
        (freed,) = await b.renew([Pool("platform", 10, "8")], demand=10, in_use=0, holding=0)
        await client.aclose()
        return blocked.slots, freed.slots

    assert asyncio.run(scenario()) == (0, 10)


_HOLDER = """
import asyncio, sys, time
import redis.asyncio
from batchlib.fair_share import Pool, SharedSlots

async def main():
    client = redis.asyncio.Redis.from_url(sys.argv[1])
    shared = SharedSlots(client, sys.argv[2], "doomed", lease_s=2)
    (grant,) = await shared.renew([Pool("platform", 200, "7")], demand=500, in_use=0, holding=200)
    print("holding", grant.slots, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""
