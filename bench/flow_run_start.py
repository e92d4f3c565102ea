"""Where a flow run's start goes: CPU and wall time from process start to its first item.

    python bench/flow_run_start.py [--runs 5] [--items 20] [--env PREFECT_X=1 ...] [--importtime FILE]

Sets up what ``bench/many_tenants.py`` does (server, bootstrap --deploy, simulator, MariaDB)
but starts no worker: for each run it creates an account-check flow run from the deployment
and runs the engine itself, exactly as the process worker would (``python -m prefect.engine``
with ``PREFECT__FLOW_RUN_ID``, the worker's environment), through a thin wrapper
(``python -m bench.flow_run_start engine``) that records CPU and wall time since the process
started at each step of Prefect's engine:

    engine imported   prefect.flow_engine and what it imports
    flow run loaded   load_flow_run: the API client and one read
    flow loaded       load_flow: pull steps, then the import of flows/account_check.py
    flow body         the flow function's first line (run_flow: state proposals, context)
    first item        the first platform request (aiohttp)
    end               interpreter exit (the flow's close, Prefect's shutdown)

Runs one after another on an otherwise idle system. ``--importtime FILE`` also runs one flow
run under ``-X importtime`` and writes the biggest top-level imports to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("engine imported", "flow run loaded", "flow loaded", "flow body", "first item", "end")


# -- inside the engine process ----------------------------------------------------------------
def _engine() -> None:
    import atexit
    import resource
    import runpy

    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    marks: dict[str, tuple[float, float]] = {}

    def mark(step: str) -> None:
        if step not in marks:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            marks[step] = (usage.ru_utime + usage.ru_stime, time.clock_gettime(time.CLOCK_BOOTTIME) - started)

    def dump() -> None:
        mark("end")
        Path(os.environ["BENCH_MARKS"]).write_text(json.dumps(marks))

    atexit.register(dump)
    import prefect.flow_engine as fe

    mark("engine imported")
    load_flow_run, load_flow = fe.load_flow_run, fe.load_flow

    def timed_load_flow_run(*args, **kwargs):
        out = load_flow_run(*args, **kwargs)
        mark("flow run loaded")
        return out

    def timed_load_flow(*args, **kwargs):
        flow = load_flow(*args, **kwargs)
        mark("flow loaded")
        return flow

    fe.load_flow_run, fe.load_flow = timed_load_flow_run, timed_load_flow
    call_flow_fn = fe.AsyncFlowRunEngine.call_flow_fn

    async def timed_call_flow_fn(self):
        mark("flow body")
        return await call_flow_fn(self)

    fe.AsyncFlowRunEngine.call_flow_fn = timed_call_flow_fn
    import aiohttp

    request = aiohttp.ClientSession._request

    async def first_request(self, *a, **k):
        mark("first item")
        return await request(self, *a, **k)

    aiohttp.ClientSession._request = first_request
    sys.argv = ["prefect.engine"]
    sys.modules.pop("prefect.engine", None)  # imported by the prefect package; run it as __main__
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


# -- the driver ---------------------------------------------------------------------------------
def _create_run(tenant_id: int) -> str:
    from prefect.client.orchestration import get_client

    async def create() -> str:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("account-check/account-check")
            run = await client.create_flow_run_from_deployment(deployment.id, parameters={"tenant_id": tenant_id})
            return str(run.id)

    return asyncio.run(create())


def _run_engine(env: dict[str, str], flow_run_id: str, marks: Path, python_args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, *python_args, "-m", "bench.flow_run_start", "engine"],
        cwd=ROOT, env={**env, "PREFECT__FLOW_RUN_ID": flow_run_id, "BENCH_MARKS": str(marks)},
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode or not marks.exists():
        raise RuntimeError(f"engine failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    marks.with_suffix(".log").write_text(proc.stdout + proc.stderr)
    return {"marks": json.loads(marks.read_text()), "stderr": proc.stderr}


def top_imports(importtime: str, limit: int = 25) -> list[tuple[str, float]]:
    """The biggest imports one level below the first one, cumulative ms (``-X importtime`` output)."""
    rows = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        _, cumulative, name = line.split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((depth, name.strip(), int(cumulative) / 1000))
    top = [(name, ms) for depth, name, ms in rows if depth == 1]
    return sorted(top, key=lambda r: -r[1])[:limit]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["engine"]:
        _engine()
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the engine processes")
    parser.add_argument("--importtime", type=Path, help="also one run under -X importtime; top imports here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from bench.many_tenants import deployed_system

    extra = dict(kv.split("=", 1) for kv in args.env)
    tenants = {t: args.items for t in range(1, args.runs + 3)}
    results = []
    with deployed_system(tenants, args.latency_ms, 50, extra) as system:
        print(f"engine logs in {system.tmp}", flush=True)
        _run_engine(system.env, _create_run(args.runs + 2), system.tmp / "warm.json", [])  # warm the disk cache
        for n in range(1, args.runs + 1):
            load = os.getloadavg()[0]
            out = _run_engine(system.env, _create_run(n), system.tmp / f"marks-{n}.json", [])
            results.append({"load": load, **out["marks"]})
        if args.importtime:
            out = _run_engine(system.env, _create_run(args.runs + 1), system.tmp / "importtime.json", ["-X", "importtime"])
            top = top_imports(out["stderr"])
            args.importtime.write_text("\n".join(f"{ms:9.1f} ms  {name}" for name, ms in top) + "\n")
    print(f"{args.runs} flow runs of {args.items} items, engine started as the process worker does; "
          f"CPU s / wall s since process start, median (min-max); load {[r['load'] for r in results]}")
    for step in STEPS:
        cpu = [r[step][0] for r in results if step in r]
        wall = [r[step][1] for r in results if step in r]
        if cpu:
            print(f"  {step:16} CPU {statistics.median(cpu):6.2f} ({min(cpu):.2f}-{max(cpu):.2f})"
                  f"   wall {statistics.median(wall):6.2f} ({min(wall):.2f}-{max(wall):.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
