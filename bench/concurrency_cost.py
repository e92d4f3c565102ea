"""What a keyed concurrency limit costs in Prefect: global concurrency limits, tag limits, none.

    PREFECT_API_URL=http://127.0.0.1:4200/api python bench/concurrency_cost.py [N]

Runs N (default 200) items that each "call the platform" for 50 ms, 50 at a time, four ways:
GCL acquire/release alone; each item inside a GCL slot; each item a plain task run under an
asyncio semaphore; each item a task run with a tag that has a 50-slot tag concurrency limit.
Figures in docs/concurrency.md.
"""
import asyncio
import sys
import time

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200

@task(tags=["bench-tenant-7"])
async def tagged(i):
    await asyncio.sleep(0.05)

@task
async def plain(i):
    await asyncio.sleep(0.05)

@flow
async def f():
    async with get_client() as c:
        name = f"k{time.time_ns()}"
        await c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=50))
        try:
            await c.create_concurrency_limit(tag="bench-tenant-7", concurrency_limit=50)
        except Exception as e: print("tag limit", e)
    t0=time.perf_counter(); c0=time.process_time()
    for i in range(50):
        async with concurrency(name, occupy=1, strict=True):
            pass
    print(f"GCL acquire+release, sequential: {(time.perf_counter()-t0)/50*1000:.1f} ms wall, {(time.process_time()-c0)/50*1000:.1f} ms CPU")
    async def one(i):
        async with concurrency(name, occupy=1, strict=True):
            await asyncio.sleep(0.05)
    t0=time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(N)))
    print(f"GCL around {N} x 50 ms calls, 50 slots: {time.perf_counter()-t0:.2f}s (ideal {N*0.05/50:.2f}s)")
    for label, t in (("plain task", plain), ("tag-limited task", tagged)):
        sem = asyncio.Semaphore(50)
        async def run(i):
            async with sem:
                await t(i)
        t0=time.perf_counter(); c0=time.process_time()
        await asyncio.gather(*(run(i) for i in range(N)))
        print(f"{label}: {N} x 50 ms in {time.perf_counter()-t0:.2f}s (ideal {N*0.05/50:.2f}s), {(time.process_time()-c0)/N*1000:.2f} ms CPU/task")

asyncio.run(f())
