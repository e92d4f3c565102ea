"""What one Prefect task run per item costs, by the ways Prefect can run it.

    PREFECT_API_URL=http://127.0.0.1:4200/api python bench/task_overhead.py [--items 1000] [--latency-ms 50]

Each variant runs N items that each "call the platform" (sleep L), 50 at a time, inside one
flow run, and prints wall time, efficiency (ideal N*L/50 / wall) and this process's CPU per
item. The item does no other work, so what is measured is Prefect's cost per task run:

- ``await``:       an async task awaited in the flow's event loop (the runner's per-item mode)
- ``submit``:      the async task submitted to ThreadPoolTaskRunner(50) (each in a worker thread)
- ``map-sync``:    a sync task mapped on ThreadPoolTaskRunner(50)
- ``process-pool``: a sync task mapped on ProcessPoolTaskRunner(2) (both cores; CPU of the
  worker processes not included)
- ``chunks``:      one async task run per 250 items, items gathered under the limit (the
  runner's chunk mode)
Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

LIMIT = 50
CHUNK = 250


@task(cache_policy=NO_CACHE, persist_result=False)
async def item_async(i: int, latency: float) -> int:
    await asyncio.sleep(latency)
    return i


@task(cache_policy=NO_CACHE, persist_result=False)
def item_sync(i: int, latency: float) -> int:
    time.sleep(latency)
    return i


_SLOTS: dict[str, asyncio.Semaphore] = {}  # the flow's limit, shared by its chunk task runs (as in the runner)


@task(cache_policy=NO_CACHE, persist_result=False)
async def chunk_async(items: list[int], latency: float) -> int:
    slots = _SLOTS["limit"]

    async def one(i: int) -> None:
        async with slots:
            await asyncio.sleep(latency)

    await asyncio.gather(*(one(i) for i in items))
    return len(items)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=LIMIT))
async def awaited(n: int, latency: float) -> None:
    slots = asyncio.Semaphore(LIMIT)

    async def one(i: int) -> None:
        async with slots:
            await item_async(i, latency)

    await asyncio.gather(*(one(i) for i in range(n)))


@flow(task_runner=ThreadPoolTaskRunner(max_workers=LIMIT))
def submitted(n: int, latency: float) -> None:
    futures = [item_async.submit(i, latency) for i in range(n)]
    [f.result() for f in futures]


@flow(task_runner=ThreadPoolTaskRunner(max_workers=LIMIT))
def mapped_sync(n: int, latency: float) -> None:
    item_sync.map(range(n), latency).result()


@flow(task_runner=ProcessPoolTaskRunner(max_workers=2))
def process_pool(n: int, latency: float) -> None:
    item_sync.map(range(n), latency).result()


@flow
async def chunks(n: int, latency: float) -> None:
    _SLOTS["limit"] = asyncio.Semaphore(LIMIT)
    await asyncio.gather(*(chunk_async(list(range(s, min(n, s + CHUNK))), latency) for s in range(0, n, CHUNK)))


VARIANTS: dict[str, Callable[[int, float], Awaitable[None] | None]] = {
    "await": awaited, "submit": submitted, "map-sync": mapped_sync,
    "process-pool": process_pool, "chunks": chunks,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--only", help="comma-separated variants")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    n, latency = args.items, args.latency_ms / 1000
    ideal = n * latency / LIMIT
    for name in (args.only.split(",") if args.only else VARIANTS):
        fn = VARIANTS[name]
        cpu0, started = time.process_time(), time.perf_counter()
        result = fn(n, latency, return_state=True)
        state = asyncio.run(result) if asyncio.iscoroutine(result) else result
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        print(
            f"{name:13s} {state.type.value:9s} N={n} wall {wall:6.2f}s (ideal {ideal:.2f}s) "
            f"efficiency {ideal / wall:.3f}  CPU {cpu * 1000 / n:.2f} ms/item",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
