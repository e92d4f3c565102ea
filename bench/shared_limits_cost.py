"""What the shared limits (platform cap, tenant total) cost: Redis renewals and Prefect reads.

    python bench/shared_limits_cost.py [--redis redis://127.0.0.1:6379/0] [--prefect]

1. One renewal (``batchlib.fair_share``, the Lua script, both pools) with M members in the
   pools: wall and client CPU per renewal, and Redis's own time per script call (INFO
   commandstats). A batch renews once per ``BATCH_SHARE_HEARTBEAT_S``, never per item: the
   cost per item is a renewal's cost over the items a batch runs in one heartbeat.
2. Items through the limiter with and without a live renewal every second (10 batches x C =
   50 under a cap of 200 in one process, each item an ``asyncio.sleep``): CPU per item.
3. With ``--prefect``: a real ``prefect server start`` (PostgreSQL); one poll of a batch's
   limits with one limit (its key) and with three (its key, ``batch:<tenant>``,
   ``batch:platform``): what the two shared limits add to each poll.

Figures in docs/benchmarks.md and docs/concurrency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio  # noqa: E402

from batchlib.fair_share import Pool, SharedSlots  # noqa: E402
from batchlib.limiter import ResizableLimiter  # noqa: E402


async def renewal_cost(url: str, members: int, rounds: int = 200) -> dict[str, float]:
    client = redis.asyncio.Redis.from_url(url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    ms = [SharedSlots(client, prefix, f"m{i}", lease_s=30) for i in range(members)]
    pools = lambda i: [Pool(f"tenant:{i % 100}", 80, ""), Pool("platform", 200, str(i % 100))]  # noqa: E731
    for i, m in enumerate(ms):  # everyone joins
        await m.renew(pools(i), demand=50, in_use=0, holding=0)
    await client.execute_command("CONFIG", "RESETSTAT")
    walls = []
    cpu0 = time.process_time()
    for r in range(rounds):
        i = r % members
        t0 = time.perf_counter()
        await ms[i].renew(pools(i), demand=50, in_use=10, holding=20)
        walls.append(time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / rounds
    stats = await client.info("commandstats")
    server = stats.get("cmdstat_evalsha", {}).get("usec_per_call", float("nan"))
    for m in ms:
        await m.leave()
    await client.aclose()
    return {"wall_ms": statistics.median(walls) * 1000, "cpu_ms": cpu * 1000, "redis_us": server}


async def items_cpu(url: str | None, batches: int = 10, c: int = 50, cap: int = 200, seconds: float = 8,
                    latency: float = 0.02) -> tuple[float, int]:
    """CPU per item of 10 batches feeding items through their limiters for ``seconds``."""
    client = redis.asyncio.Redis.from_url(url) if url else None
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    done = 0
    stop = asyncio.Event()

    async def batch(i: int) -> None:
        nonlocal done
        limiter = ResizableLimiter(c if client is None else 0)
        shared = SharedSlots(client, prefix, f"b{i}", lease_s=30) if client else None

        async def beat() -> None:
            first = True
            while not stop.is_set():
                (grant,) = await shared.renew(
                    [Pool("platform", cap, str(i))], demand=c, in_use=limiter.in_use,
                    holding=max(limiter.in_use, 0 if first else limiter.size),
                )
                first = False
                limiter.resize(min(c, grant.slots))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

        async def item() -> None:
            nonlocal done
            try:
                await asyncio.sleep(latency)
            finally:
                limiter.release()
            done += 1

        beater = asyncio.create_task(beat()) if shared else None
        running: set[asyncio.Task] = set()
        while not stop.is_set():
            await limiter.acquire()
            task = asyncio.create_task(item())
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
        if beater:
            await beater
            await shared.leave()

    cpu0 = time.process_time()
    tasks = [asyncio.create_task(batch(i)) for i in range(batches)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    cpu = time.process_time() - cpu0
    if client:
        await client.aclose()
    return cpu / max(done, 1) * 1000, done


async def prefect_poll_cost(rounds: int = 20) -> dict[str, float]:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from deployments.local_server import PrefectServer
    from tasks.limits import _read_all

    with PrefectServer() as server, temporary_settings(
        {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: server.auth_string}
    ):
        out = {}
        for label, wanted in (
            ("key only", [("batch:7:account_check", 50)]),
            ("key + tenant + platform", [("batch:7:account_check", 50), ("batch:7", 80), ("batch:platform", 200)]),
            ("key + two absent limits", [("batch:8:account_check", 50), ("batch:8", None), ("batch:platform9", None)]),
        ):
            await _read_all(wanted)  # created once
            walls, cpu0 = [], time.process_time()
            for _ in range(rounds):
                t0 = time.perf_counter()
                await _read_all(wanted)
                walls.append(time.perf_counter() - t0)
            out[label] = (statistics.median(walls) * 1000, (time.process_time() - cpu0) / rounds * 1000)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefect", action="store_true")
    args = parser.parse_args()

    print("1. one renewal (2 pools), by members in the pools")
    for m in (10, 100, 1000):
        r = asyncio.run(renewal_cost(args.redis, m))
        print(f"   M = {m:5d}: wall {r['wall_ms']:.3f} ms (median), client CPU {r['cpu_ms']:.3f} ms, "
              f"Redis {r['redis_us']:.0f} µs per script call")
    print("2. 10 batches x C = 50, 20 ms items, 8 s; CPU per item")
    alone, n_alone = asyncio.run(items_cpu(None))
    shared, n_shared = asyncio.run(items_cpu(args.redis))
    print(f"   own limiters only (cap not enforced): {alone:.4f} ms/item ({n_alone} items)")
    print(f"   cap of 200 shared through Redis, renewal every 1 s: {shared:.4f} ms/item ({n_shared} items)")
    if args.prefect:
        print("3. one poll of a batch's limits (real prefect server, PostgreSQL)")
        for label, (wall, cpu) in asyncio.run(prefect_poll_cost()).items():
            print(f"   {label}: wall {wall:.1f} ms (median), client CPU {cpu:.1f} ms")


if __name__ == "__main__":
    main()
