"""Benchmark: how close a batch gets to the platform's limit, and what each layer costs.

    python bench/run.py --items 1000,10000 --concurrency 50 --latency-ms 50 \\
        [--big-items 100000 --big-latency-ms 5] [--prefect-api URL]

Starts the platform simulator in its own process, a fresh MariaDB database, and (unless
--prefect-api is given) a real Prefect server on a fresh PostgreSQL database. For each N it
runs the raw baseline (asyncio + the same client, no Prefect, no mirror) and the full
account-check flow, each in a fresh process, and prints efficiency = ideal / wall time
with ideal = N * L / C, CPU ms per item, mirror round trips per item, the worst delay
between an item finishing and the admin panel seeing it, peak RSS, task runs created and
the Prefect database's growth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MYSQL = os.environ.get("BENCH_MYSQL", "mysql+pymysql://root:@127.0.0.1:3306")
PG = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _probe(kind: str, tenant_id: int, env: dict[str, str], concurrency: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.probe", kind, "--tenant-id", str(tenant_id), "--concurrency", str(concurrency)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise RuntimeError(f"probe {kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _pg(db: str, sql: str) -> int:
    url = PG.rsplit("/", 1)[0] + "/" + db
    out = subprocess.run(["psql", url, "-At", "-c", sql], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def _prefect_db(db: str, settle_s: float = 30) -> tuple[int, int]:
    """(bytes, task runs) of the Prefect server's database, once it has recorded every event.

    Task runs reach the server as events and are written in the background: wait until the
    count stops moving (2 s unchanged) before reading.
    """
    count, deadline = -1, time.monotonic() + settle_s
    while time.monotonic() < deadline:
        now = _pg(db, "SELECT count(*) FROM task_run")
        if now == count:
            break
        count = now
        time.sleep(2)
    return _pg(db, f"SELECT pg_database_size('{db}')"), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", default="1000,10000", help="comma-separated batch sizes")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--big-items", type=int, default=0, help="also a memory run with this many items")
    parser.add_argument("--big-latency-ms", type=float, default=5)
    parser.add_argument("--prefect-api", help="use this Prefect API instead of starting a server")
    parser.add_argument("--prefect-db", help="with --prefect-api: its PostgreSQL database, to measure growth")
    parser.add_argument("--chunk-threshold", type=int, help="override BATCH_CHUNK_THRESHOLD")
    parser.add_argument("--chunk-size", type=int, help="override BATCH_CHUNK_SIZE")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.items.split(",") if n]
    runs = [(n, args.latency_ms) for n in sizes] + ([(args.big_items, args.big_latency_ms)] if args.big_items else [])

    import pymysql

    from batchlib.seeding import import_accounts
    from db import get_engine, upgrade
    from deployments.local_server import PrefectServer
    from simulators.account_platform import PlatformSimulator

    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    admin.cursor().execute(f"CREATE DATABASE `{db_name}`")
    url = f"{MYSQL}/{db_name}?charset=utf8mb4"
    server = None if args.prefect_api else PrefectServer().start()
    api_url = args.prefect_api or server.api_url
    prefect_db = server.db if server else args.prefect_db
    results = []
    try:
        upgrade(url)
        engine = get_engine(url)
        with PlatformSimulator(subprocess=True, latency_ms=0, log_max=10) as sim:
            env = {**(server.env if server else os.environ), "PREFECT_API_URL": api_url,
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "BATCH_DATABASE_URL": url,
                   "BATCH_PLATFORM_URL": sim.url, "BATCH_CONCURRENCY": str(args.concurrency)}
            if args.chunk_threshold is not None:
                env["BATCH_CHUNK_THRESHOLD"] = str(args.chunk_threshold)
            if args.chunk_size is not None:
                env["BATCH_CHUNK_SIZE"] = str(args.chunk_size)
            for tenant_id, (n, latency) in enumerate(runs, start=1):
                sim.seed({tenant_id: n})
                import_accounts(engine, sim.accounts(tenant_id))
                sim.configure(latency_ms=latency)
                ideal = n * latency / 1000 / args.concurrency
                baseline = _probe("baseline", tenant_id, env, args.concurrency)
                before = _prefect_db(prefect_db) if prefect_db else None
                flow = _probe("flow", tenant_id, env, args.concurrency)
                after = _prefect_db(prefect_db) if prefect_db else None
                row = _row(n, latency, args.concurrency, ideal, baseline, flow, before, after)
                results.append(row)
                _print_row(row)
    finally:
        if server:
            server.stop()
        admin.cursor().execute(f"DROP DATABASE IF EXISTS `{db_name}`")
        admin.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _row(n, latency, c, ideal, baseline, flow, before, after) -> dict:
    db = flow["db"]
    trips = db["statements"] + db["commits"] + db["checkouts"]
    summary = flow["summary"]
    return {
        "items": n, "latency_ms": latency, "concurrency": c, "ideal_s": round(ideal, 2),
        "baseline_wall_s": round(baseline["wall_s"], 2), "flow_wall_s": round(flow["wall_s"], 2),
        "baseline_efficiency": round(ideal / baseline["wall_s"], 3),
        "flow_efficiency": round(ideal / flow["wall_s"], 3),
        "flow_vs_baseline": round(baseline["wall_s"] / flow["wall_s"], 3),
        "baseline_cpu_ms_per_item": round(baseline["cpu_s"] * 1000 / n, 3),
        "flow_cpu_ms_per_item": round(flow["cpu_s"] * 1000 / n, 3),
        "flow_item_processes_cpu_ms_per_item": round(flow.get("children_cpu_s", 0) * 1000 / n, 3),
        "baseline_fixed_s": _round(baseline.get("fixed_s"), 3), "flow_fixed_s": _round(flow.get("fixed_s"), 3),
        "flow_first_item_s": _round(flow.get("first_item_s"), 3),
        "flow_runner_fixed_s": _round(flow.get("runner_fixed_s"), 3),
        "db_statements": db["statements"], "db_round_trips": trips, "db_connects": db.get("connects"),
        "db_round_trips_per_item": round(trips / n, 4),
        "mirror_flushes": summary.get("mirror_flushes"), "mirror_max_lag_s": summary.get("mirror_max_lag_s"),
        "flow_peak_rss_mib": round(flow["peak_rss_mib"], 1),
        "baseline_peak_rss_mib": round(baseline["peak_rss_mib"], 1),
        "task_runs": after[1] - before[1] if before else None, "mode": summary.get("mode"),
        "prefect_db_growth_mib": round((after[0] - before[0]) / 2**20, 2) if before else None,
        "status": summary.get("status"), "success": summary.get("success"),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _print_row(row: dict) -> None:
    print(
        f"\nN={row['items']} L={row['latency_ms']}ms C={row['concurrency']} ideal={row['ideal_s']}s "
        f"[{row['mode']}, {row['status']} {row['success']}/{row['items']}]\n"
        f"  wall:        baseline {row['baseline_wall_s']}s   flow {row['flow_wall_s']}s\n"
        f"  efficiency:  baseline {row['baseline_efficiency']}   flow {row['flow_efficiency']}"
        f"   (flow/baseline speed {row['flow_vs_baseline']})\n"
        f"  CPU/item:    baseline {row['baseline_cpu_ms_per_item']} ms   flow {row['flow_cpu_ms_per_item']} ms"
        f" (+ {row['flow_item_processes_cpu_ms_per_item']} ms in item processes)\n"
        f"  fixed cost:  baseline {row['baseline_fixed_s']}s   flow {row['flow_fixed_s']}s"
        f" (before the first item + after the last; flow's first item at {row['flow_first_item_s']}s;"
        f" {row['flow_runner_fixed_s']}s of it in BatchRun.execute, the rest is Prefect's flow run)\n"
        f"  mirror:      {row['db_statements']} statements, {row['db_round_trips']} round trips"
        f" = {row['db_round_trips_per_item']} per item, {row['db_connects']} connections opened;"
        f" {row['mirror_flushes']} flushes,"
        f" worst lag {row['mirror_max_lag_s']}s"
        f"{' (the run: the item processes write their own)' if 'item processes' in str(row['mode']) else ''}\n"
        f"  memory:      flow peak RSS {row['flow_peak_rss_mib']} MiB (baseline {row['baseline_peak_rss_mib']} MiB)\n"
        f"  prefect:     {row['task_runs']} task runs, API database +{row['prefect_db_growth_mib']} MiB",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
