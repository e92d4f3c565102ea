"""One measurement in a fresh process, printed as one JSON line (bench/run.py drives it).

    python -m bench.probe flow --tenant-id 1 --items 10000
    python -m bench.probe baseline --tenant-id 1 --items 10000 --concurrency 50

``flow``: a full account-check batch (Prefect flow, real mirror) through the runner.
``baseline``: plain asyncio + the same PlatformClient against the same simulator; no
Prefect, no mirror, tokens in memory. Both report wall time, process CPU, peak RSS and the
fixed cost: wall time before the first item starts plus after the last one ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any


def _usage() -> tuple[float, float]:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    return self_.ru_utime + self_.ru_stime, self_.ru_maxrss / 1024  # CPU seconds, peak RSS MiB


def _children_cpu() -> float:
    """CPU seconds of the child processes that ended (the flow's item processes, if any)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def _count_round_trips(engine) -> dict[str, int]:
    """Statements, commits, pool checkouts (each checkout pre-pings: one round trip) and new connections."""
    from sqlalchemy import event

    counts = {"statements": 0, "commits": 0, "checkouts": 0, "connects": 0}

    @event.listens_for(engine.pool, "connect")
    def _connect(*_: Any) -> None:
        counts["connects"] += 1

    @event.listens_for(engine, "before_cursor_execute")
    def _stmt(*_: Any) -> None:
        counts["statements"] += 1

    @event.listens_for(engine, "commit")
    def _commit(*_: Any) -> None:
        counts["commits"] += 1

    @event.listens_for(engine.pool, "checkout")
    def _checkout(*_: Any) -> None:
        counts["checkouts"] += 1

    return counts


class _Span:
    """When the first item started and the last one ended (perf_counter): wall time outside
    that span is the batch's fixed cost (set-up before the first item, closing after the last)."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None

    async def around(self, call):
        if self.first is None:
            self.first = time.perf_counter()
        try:
            return await call
        finally:
            self.last = time.perf_counter()

    def fixed_s(self, started: float, ended: float) -> float | None:
        if self.first is None or self.last is None:
            return None
        return (self.first - started) + (ended - self.last)


def run_flow(tenant_id: int) -> dict[str, Any]:
    from db import get_engine
    from flows.account_check import account_check
    from flows.batch_runner import BatchRun

    counts = _count_round_trips(get_engine())
    # Items run through run_chunk (in this process or in item processes) or process (a task per item).
    span, process, run_chunk = _Span(), BatchRun.process, BatchRun.run_chunk
    BatchRun.process = lambda run, item_id, item_data: span.around(process(run, item_id, item_data))
    BatchRun.run_chunk = lambda run, first_id: span.around(run_chunk(run, first_id))
    runner, execute = _Span(), BatchRun.execute  # the runner's own part: from the flow function's start
    BatchRun.execute = lambda run: runner.around(execute(run))
    cpu0, _ = _usage()
    children0 = _children_cpu()
    started = time.perf_counter()
    state = asyncio.run(account_check(tenant_id=tenant_id, return_state=True))
    ended = time.perf_counter()
    cpu1, rss = _usage()
    summary = state.result() if state.is_completed() else {"status": state.type.value, "message": state.message}
    return {"kind": "flow", "wall_s": ended - started, "cpu_s": cpu1 - cpu0, "peak_rss_mib": rss,
            "children_cpu_s": _children_cpu() - children0, "summary": summary, "db": counts, "fixed_s": span.fixed_s(started, ended),
            "first_item_s": span.first - started if span.first else None,
            "runner_fixed_s": span.fixed_s(runner.first, runner.last) if runner.first and runner.last else None}


def run_baseline(tenant_id: int, concurrency: int) -> dict[str, Any]:
    import httpx

    from batchcore.settings import get_settings
    from batchlib.platform_client import InMemoryTokenStore, PlatformClient

    settings = get_settings()
    accounts = httpx.get(f"{settings.platform_url}/_sim/accounts", params={"tenant_id": tenant_id}, timeout=60).json()
    store = InMemoryTokenStore()
    for n, account in enumerate(accounts):
        store.put(n, account["access_token"], account["refresh_token"])

    span = _Span()

    async def main() -> dict[str, int]:
        limit = asyncio.Semaphore(concurrency)
        ok = failed = 0
        async with PlatformClient.from_settings(settings, store) as client:

            async def one(n: int) -> None:
                nonlocal ok, failed
                async with limit:
                    try:
                        await span.around(client.get_me(n))
                        ok += 1
                    except Exception:
                        failed += 1

            await asyncio.gather(*(one(n) for n in range(len(accounts))))
        return {"success": ok, "failed": failed}

    cpu0, _ = _usage()
    started = time.perf_counter()
    result = asyncio.run(main())
    ended = time.perf_counter()
    cpu1, rss = _usage()
    return {"kind": "baseline", "wall_s": ended - started, "cpu_s": cpu1 - cpu0, "peak_rss_mib": rss,
            "summary": result, "fixed_s": span.fixed_s(started, ended),
            "first_item_s": span.first - started if span.first else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    parser.add_argument("kind", choices=["flow", "baseline"])
    parser.add_argument("--tenant-id", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    result = run_flow(args.tenant_id) if args.kind == "flow" else run_baseline(args.tenant_id, args.concurrency)
    print("PROBE " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
