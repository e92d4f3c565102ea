"""Benchmark: T batches started at once through a real server and a real process worker.

    python bench/many_tenants.py --tenants 20 --items 2000 --latency-ms 20 [--rounds 2]
        [--concurrency 50] [--env PREFECT_X=1 ...] [--json out.json]

Starts a MariaDB database, the platform simulator (own process), a real ``prefect server
start`` on a fresh PostgreSQL database, ``python -m deployments.bootstrap --deploy`` from
prefect.yaml (the schedules of maintenance, nightly-check and prune are paused so nothing
else runs), and one ``prefect worker start --pool batch-pool`` (limit T) in its own
session: the path a nightly check of every tenant takes in production. Each round creates
T account-check flow runs of T fresh tenants (N accounts each) from the deployment at once
and waits for all of them to end.

A sampler reads /proc every 0.1 s: the CPU of every flow-run process under the worker (its
``PREFECT__FLOW_RUN_ID``) and the summed RSS of the worker's process tree (peak memory of the
worker host). The simulator's call log gives each tenant's first and last platform call.
Reported per round: makespan (runs created -> last run ended) against the ideal N·L/C (the
tenants run side by side, each with its own C), the wait until each process starts, the CPU
a flow-run process spends before its first platform call ("start") and per item after it,
the worker host's peak RSS, the server's and simulator's CPU, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MYSQL = os.environ.get("BENCH_MYSQL", "mysql+pymysql://root:@127.0.0.1:3306")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PAUSED = ("maintenance/maintenance", "nightly-check/nightly-check", "prune/prune")


class System(NamedTuple):
    env: dict[str, str]  # for a worker, the CLI or an engine process
    sim: Any
    engine: Any
    server: Any
    tmp: Path


def _now() -> float:
    """Seconds since boot, the clock of /proc/<pid>/stat's start time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# -- /proc ---------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float, float, int] | None:
    """(ppid, CPU seconds, start seconds since boot, RSS bytes) of a process, None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): ppid = 4, utime = 14, stime = 15, starttime = 22, rss = 24
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, int(fields[19]) / TICK, int(fields[21]) * PAGE


def _table() -> dict[int, tuple[int, float, float, int]]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            procs[int(entry)] = st
    return procs


def _tree(roots: list[int], procs: dict[int, tuple[int, float, float, int]] | None = None) -> dict[int, Any]:
    procs = _table() if procs is None else procs
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st[0], []).append(pid)
    out, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        if pid in procs:
            out[pid] = procs[pid]
        todo.extend(children.get(pid, []))
    return out


def _read(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _flow_run_id(pid: int) -> str | None:
    for item in _read(pid, "environ").split(b"\0"):
        if item.startswith(b"PREFECT__FLOW_RUN_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


def _pss(pid: int) -> int:
    for line in _read(pid, "smaps_rollup").splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1]) * 1024
    return 0


WARM_LOGS = f"{tempfile.gettempdir()}/batch-warm-engine-{os.getuid()}/*.sock.log"


def _warm_children() -> dict[int, int]:
    """Forked flow-run process -> its client (deployments/warm_engine.py's log lines)."""
    import glob
    import re

    out = {}
    for log in glob.glob(WARM_LOGS):
        for child, client in re.findall(r"flow-run process (\d+) for client (\d+)", Path(log).read_text(errors="replace")):
            out[int(child)] = int(client)
    return out


class Sampler(threading.Thread):
    """Every ``interval`` s: the CPU of each flow run's processes (below the worker: the engine
    process or the warm engine's client; below a warm engine process: its forked child), the
    RSS of the worker host's processes (worker tree + warm engine trees), their PSS every 5th."""

    def __init__(self, worker: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.worker, self.interval = worker, interval
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self.procs: dict[int, dict[str, Any]] = {}  # pid -> flow_run_id, start, samples [(t, cpu)]
        self.kind: dict[int, str | None] = {}  # pid -> flow run id, "warm", or None
        self.warm: dict[int, int] = {}

    def _classify(self, pid: int) -> str | None:
        if pid not in self.kind:
            cmdline = _read(pid, "cmdline")
            self.kind[pid] = "warm" if b"deployments.warm_engine\0--serve" in cmdline else _flow_run_id(pid)
        return self.kind[pid]

    def run(self) -> None:
        tick = 0
        while not self.stop_event.is_set():
            now = _now()
            table = _table()
            servers = [pid for pid, st in table.items()
                       if self._classify(pid) == "warm" and self._classify(st[0]) != "warm"]
            tree = _tree([self.worker, *servers], table)
            self.peak_rss = max(self.peak_rss, sum(st[3] for st in tree.values()))
            if tick % 5 == 0:
                self.peak_pss = max(self.peak_pss, sum(_pss(pid) for pid in tree))
            tick += 1
            for pid, (ppid, cpu, start, _rss) in tree.items():
                run_id = self._classify(pid)
                if run_id in (None, "warm") and pid not in servers and ppid in servers:  # a forked child
                    if pid not in self.warm:
                        self.warm = _warm_children()
                    client = self.warm.get(pid)
                    run_id = self.kind.get(client) if client else None
                if run_id in (None, "warm"):
                    continue
                seen = self.procs.setdefault(pid, {"flow_run_id": run_id, "start": start, "samples": []})
                seen["samples"].append((now, cpu))
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def by_flow_run(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for proc in self.procs.values():
            out.setdefault(proc["flow_run_id"], []).append(proc)
        return out


def _cpu_at(samples: list[tuple[float, float]], t: float) -> float:
    """The process's CPU at time ``t``, interpolated between samples."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] > t]
    if not before:
        return samples[0][1]
    if not after:
        return samples[-1][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0)


def _tree_cpu(pid: int) -> float:
    return sum(st[1] for st in _tree([pid]).values())


# -- the system ------------------------------------------------------------------------------
def _bootstrap(env: dict[str, str]) -> None:
    boot = subprocess.run([sys.executable, "-m", "deployments.bootstrap", "--deploy"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if boot.returncode:
        raise RuntimeError(f"bootstrap failed:\n{boot.stdout[-3000:]}\n{boot.stderr[-3000:]}")


async def _pause_others(client: Any) -> None:
    """Pause every schedule but the batches', and drop the runs they already scheduled."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    for name in PAUSED:
        deployment = await client.read_deployment_by_name(name)
        for schedule in deployment.schedules:
            await client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        for run in await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        ):
            if not run.state or not run.state.is_final():
                await client.delete_flow_run(run.id)


WARM_COMMAND = f"sh -c 'exec {sys.executable} \"$BATCH_REPO_DIR/deployments/warm_engine.py\"'"


async def _use_warm_engine(client: Any) -> None:
    from prefect.client.schemas.actions import DeploymentUpdate

    deployment = await client.read_deployment_by_name("account-check/account-check")
    await client.update_deployment(deployment.id, DeploymentUpdate(
        job_variables={**(deployment.job_variables or {}), "command": WARM_COMMAND}))


def _stop_warm_engines(database_url: str) -> None:
    """The warm engine processes this run's flow runs started (they outlive the worker)."""
    import signal

    for pid in _table():
        cmdline = _read(pid, "cmdline").split(b"\0")
        if b"deployments.warm_engine" in cmdline and b"--serve" in cmdline and \
                f"BATCH_DATABASE_URL={database_url}".encode() in _read(pid, "environ"):
            os.kill(pid, signal.SIGTERM)
            path = cmdline[cmdline.index(b"--serve") + 1].decode()
            for suffix in (".log", ".lock"):
                Path(path + suffix).unlink(missing_ok=True)


async def _start_round(client: Any, tenants: list[int]) -> dict[str, int]:
    deployment = await client.read_deployment_by_name("account-check/account-check")
    runs = await asyncio.gather(*(
        client.create_flow_run_from_deployment(deployment.id, parameters={"tenant_id": t}) for t in tenants
    ))
    return {str(run.id): t for run, t in zip(runs, tenants)}


async def _wait_round(client: Any, runs: dict[str, int], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        states = {rid: await client.read_flow_run(uuid.UUID(rid)) for rid in runs}
        if all(r.state and r.state.is_final() for r in states.values()):
            return states
        if time.monotonic() > deadline:
            pending = {rid: r.state.type.value if r.state else None for rid, r in states.items() if not r.state.is_final()}
            raise RuntimeError(f"flow runs still running after {timeout:.0f}s: {pending}")
        await asyncio.sleep(0.5)


def _worker(env: dict[str, str], limit: int, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "batch-pool", "--type", "process",
         "--name", "bench-worker", "--limit", str(limit)],
        cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _wait_worker_ready(log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        if "started!" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError("worker did not start")


# -- one round -------------------------------------------------------------------------------
def _round(args: argparse.Namespace, n_round: int, tenants: list[int], worker: subprocess.Popen,
           server_pid: int, sim: Any, engine: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from sqlalchemy import text

    load_before = os.getloadavg()
    sampler = Sampler(worker.pid)
    sampler.start()
    server_cpu0, sim_cpu0 = _tree_cpu(server_pid), _tree_cpu(sim._runner._proc.pid)
    calls_since = time.monotonic()

    async def drive() -> tuple[float, float, dict[str, int], dict[str, Any]]:
        async with get_client() as client:
            t0, wall0 = _now(), time.time()
            runs = await _start_round(client, tenants)
            states = await _wait_round(client, runs, args.timeout)
        return t0, wall0, runs, states

    try:
        t0, wall0, runs, states = asyncio.run(drive())
        time.sleep(0.3)
    finally:
        sampler.stop()
    load_after = os.getloadavg()
    server_cpu, sim_cpu = _tree_cpu(server_pid) - server_cpu0, _tree_cpu(sim._runner._proc.pid) - sim_cpu0
    boot_minus_mono = _now() - time.monotonic()  # the simulator logs time.monotonic()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for call in sim.calls(endpoint="GET /v1/me", since=calls_since):  # account-check's one call per item
        t = call["tenant_id"]
        first[t] = min(first.get(t, call["t"]), call["t"])
        last[t] = max(last.get(t, call["end"]), call["end"])
    procs = sampler.by_flow_run()
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT tenant_id, task_status, success_count, failed_count FROM la_batch_task "
            f"WHERE tenant_id IN ({','.join(str(int(t)) for t in tenants)})"
        )).all()
    batches = {r.tenant_id: r for r in rows}
    per_run = []
    for rid, tenant in runs.items():
        state = states[rid]
        row: dict[str, Any] = {
            "tenant_id": tenant, "state": state.state.type.value,
            "end_s": state.end_time.timestamp() - wall0 if state.end_time else None,
            "batch": list(batches[tenant])[1:] if tenant in batches else None,
        }
        group = procs.get(rid, [])
        if group:
            start = min(p["start"] for p in group)
            row["process_start_s"] = start - t0
            row["processes"] = len(group)
            row["cpu_total_s"] = sum(p["samples"][-1][1] for p in group)
            if tenant in first:
                t_first = first[tenant] + boot_minus_mono
                row["first_item_s"] = t_first - t0
                row["last_item_s"] = last[tenant] + boot_minus_mono - t0
                row["cpu_start_s"] = sum(_cpu_at(p["samples"], t_first) for p in group if p["start"] <= t_first)
                row["start_to_first_item_s"] = t_first - start
        per_run.append(row)
    return _summary(args, n_round, per_run, sampler.peak_rss, sampler.peak_pss, server_cpu, sim_cpu, load_before, load_after)


def _summary(args, n_round, per_run, peak_rss, peak_pss, server_cpu, sim_cpu, load_before, load_after) -> dict[str, Any]:
    ideal = args.items * args.latency_ms / 1000 / args.concurrency
    ends = [r["end_s"] for r in per_run if r["end_s"] is not None]
    measured = [r for r in per_run if "cpu_start_s" in r]
    completed = [r for r in per_run if r["state"] == "COMPLETED" and r["batch"]
                 and r["batch"][0] == "completed" and r["batch"][1] + r["batch"][2] == args.items]

    def med(key: str) -> float | None:
        values = [r[key] for r in measured if key in r]
        return round(statistics.median(values), 3) if values else None

    def mean(key: str) -> float | None:
        values = [r[key] for r in measured if key in r]
        return round(statistics.fmean(values), 3) if values else None

    item_cpu = [(r["cpu_total_s"] - r["cpu_start_s"]) for r in measured]
    total_cpu = sum(r.get("cpu_total_s", 0) for r in per_run)
    start_cpu = sum(r["cpu_start_s"] for r in measured)
    return {
        "round": n_round, "tenants": args.tenants, "items": args.items, "latency_ms": args.latency_ms,
        "concurrency": args.concurrency, "ideal_s": round(ideal, 2),
        "makespan_s": round(max(ends), 2) if ends else None,
        "makespan_vs_ideal": round(max(ends) / ideal, 1) if ends else None,
        "completed": len(completed), "runs": len(per_run),
        "process_start_s": {"first": round(min(r["process_start_s"] for r in measured), 2) if measured else None,
                            "last": round(max(r["process_start_s"] for r in measured), 2) if measured else None},
        "first_item_s": {"first": round(min(r["first_item_s"] for r in measured), 2) if measured else None,
                         "last": round(max(r["first_item_s"] for r in measured), 2) if measured else None},
        "start_to_first_item_s_median": med("start_to_first_item_s"),
        "cpu_start_s_mean": mean("cpu_start_s"), "cpu_start_s_median": med("cpu_start_s"),
        "cpu_per_item_ms": round(sum(item_cpu) * 1000 / (args.items * len(measured)), 3) if measured else None,
        "flow_runs_cpu_s": round(total_cpu, 1), "start_share": round(start_cpu / total_cpu, 2) if total_cpu else None,
        "server_cpu_s": round(server_cpu, 1), "simulator_cpu_s": round(sim_cpu, 1),
        "worker_peak_rss_mib": round(peak_rss / 2**20, 1), "worker_peak_pss_mib": round(peak_pss / 2**20, 1),
        "warm_engine": args.warm_engine,
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "per_run": per_run,
    }


def _print(row: dict[str, Any]) -> None:
    print(
        f"\nround {row['round']}: T={row['tenants']} N={row['items']} L={row['latency_ms']}ms C={row['concurrency']}"
        f"{' warm engine' if row['warm_engine'] else ''}  [{row['completed']}/{row['runs']} batches completed, every item done]"
        f"  load {row['load_before'][0]} -> {row['load_after'][0]}\n"
        f"  makespan:    {row['makespan_s']} s against an ideal of {row['ideal_s']} s"
        f" (x{row['makespan_vs_ideal']})\n"
        f"  starts:      processes started {row['process_start_s']['first']}-{row['process_start_s']['last']} s,"
        f" first items {row['first_item_s']['first']}-{row['first_item_s']['last']} s after the runs were created;"
        f" process start -> first item median {row['start_to_first_item_s_median']} s\n"
        f"  CPU/start:   {row['cpu_start_s_mean']} s mean ({row['cpu_start_s_median']} s median) per flow-run process"
        f" before its first item = {row['start_share']} of the flow runs' CPU ({row['flow_runs_cpu_s']} s)\n"
        f"  CPU/item:    {row['cpu_per_item_ms']} ms after the first item\n"
        f"  elsewhere:   Prefect server {row['server_cpu_s']} s CPU, simulator {row['simulator_cpu_s']} s CPU\n"
        f"  memory:      worker host peak RSS {row['worker_peak_rss_mib']} MiB, PSS {row['worker_peak_pss_mib']} MiB"
        f" (worker + flow-run processes{' + warm engine' if row['warm_engine'] else ''})",
        flush=True,
    )


@contextlib.contextmanager
def deployed_system(tenants: dict[int, int], latency_ms: float, concurrency: int,
                    extra_env: dict[str, str] | None = None, warm_engine: bool = False) -> Iterator[System]:
    """MariaDB database, simulator (seeded with ``tenants``), server, bootstrap --deploy, with
    every schedule but the batches' paused. No worker: the caller starts one (or runs the engine)."""
    import pymysql
    import redis

    from batchlib.seeding import import_accounts
    from db import get_engine
    from deployments.local_server import PrefectServer
    from simulators.account_platform import PlatformSimulator

    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench:{db_name}:"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{db_name}` CHARACTER SET utf8mb4")
    url = f"{MYSQL}/{db_name}?charset=utf8mb4"
    server = PrefectServer().start()
    engine = None
    try:
        with PlatformSimulator(subprocess=True, latency_ms=latency_ms) as sim:
            sim.seed(tenants)
            env = {
                **server.env, "BATCH_DATABASE_URL": url, "BATCH_PLATFORM_URL": sim.url,
                "BATCH_REDIS_URL": REDIS, "BATCH_REDIS_KEY_PREFIX": prefix, "BATCH_REPO_DIR": str(ROOT),
                "BATCH_CONCURRENCY": str(concurrency),
                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "PREFECT_WORKER_QUERY_SECONDS": "2",
                **(extra_env or {}),
            }
            os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
            _bootstrap(env)
            engine = get_engine(url)
            import_accounts(engine, sim.accounts())

            from prefect.client.orchestration import PrefectClient

            async def pause() -> None:  # this server's client, even where Prefect's settings are already loaded (pytest)
                async with PrefectClient(server.api_url, auth_string=server.auth_string) as client:
                    await _pause_others(client)
                    if warm_engine:
                        await _use_warm_engine(client)

            asyncio.run(pause())
            yield System(env, sim, engine, server, Path(tempfile.mkdtemp(prefix="bench-tenants-")))
    finally:
        if engine is not None:
            engine.dispose()
        _stop_warm_engines(url)
        server.stop()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{db_name}`")
        admin.close()
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--items", type=int, default=2000, help="accounts per tenant")
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=50, help="BATCH_CONCURRENCY (per tenant and type)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds one after another, fresh tenants each")
    parser.add_argument("--worker-limit", type=int, help="flow runs at once on the worker (default: --tenants)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker and its flow runs")
    parser.add_argument("--warm-engine", action="store_true",
                        help="start flow runs with deployments/warm_engine.py (job variable command)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    all_tenants = list(range(1, args.tenants * args.rounds + 1))
    extra = dict(kv.split("=", 1) for kv in args.env)
    results = []
    with deployed_system({t: args.items for t in all_tenants}, args.latency_ms, args.concurrency, extra,
                         args.warm_engine) as system:
        log = system.tmp / "worker.log"
        worker = _worker(system.env, args.worker_limit or args.tenants, log)
        try:
            _wait_worker_ready(log, worker)
            time.sleep(3)  # the worker's own start-up CPU is not part of a round
            for n in range(args.rounds):
                tenants = all_tenants[n * args.tenants:(n + 1) * args.tenants]
                row = _round(args, n + 1, tenants, worker, system.server._proc.pid, system.sim, system.engine)
                results.append(row)
                _print(row)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, 15)
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, 9)
                    worker.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
