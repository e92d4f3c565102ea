"""The quick start: two tenants' liveness checks side by side, on the embedded defaults.

    python -m flows.quickstart [--accounts 150] [--latency-ms 30] [--keep-running]

Starts the bundled platform simulator on loopback, creates the mirror tables (SQLite file
``batch_mirror.db`` unless BATCH_DATABASE_URL says otherwise), copies the simulator's
accounts of tenants 1 and 2 into ``la_alt_account``, runs one ``account-check`` flow per
tenant concurrently under Prefect, and prints the resulting ``la_batch_task`` rows.

``--keep-running`` also seeds tenant 7 (its last three accounts answer HTTP 500 to their next
calls, so a first batch shows failed items and a retry of them succeeds), serves the simulator
on the address of BATCH_PLATFORM_URL (default http://127.0.0.1:8900) and keeps it up until
Ctrl-C, printing the commands to try next from a second terminal in the same directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from urllib.parse import urlsplit

from prefect import flow
from sqlalchemy import bindparam, text

from batchcore.settings import get_settings
from batchlib.seeding import import_accounts
from db import database_url, get_engine, upgrade
from flows.account_check import account_check
from flows.batch_cli import drain_ephemeral_api, quiet_prefect
from simulators.account_platform import PlatformSimulator

TENANTS = (1, 2)
EXTRA_TENANT = 7  # seeded with --keep-running, for the README's "Running a batch" commands
FAILING = 3  # accounts of EXTRA_TENANT whose next calls fail, so a batch shows failures


@flow(name="quickstart")
async def quickstart(tenants: list[int]) -> list[str]:
    states = await asyncio.gather(*(account_check(tenant_id=t, return_state=True) for t in tenants))
    return [s.message or s.type.value for s in states]


def _print_rows(engine, first_id: int) -> None:
    columns = ("id", "tenant_id", "task_type", "task_status", "total_count", "processed_count",
               "success_count", "failed_count", "start_time", "end_time")
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {', '.join(columns)} FROM la_batch_task WHERE id >= :first ORDER BY id"),
                            {"first": first_id}).all()
        banned = conn.execute(text("SELECT tenant_id, status, COUNT(*) FROM la_alt_account "
                                   "GROUP BY tenant_id, status ORDER BY tenant_id, status")).all()
    widths = [max(len(c), 10) for c in columns]
    print("\nla_batch_task")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
    print("\nla_alt_account by status: " + ", ".join(f"tenant {t} {s}: {n}" for t, s, n in banned))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=150, help="accounts per tenant (default 150)")
    parser.add_argument("--latency-ms", type=float, default=30, help="simulated platform latency")
    parser.add_argument(
        "--keep-running", action="store_true",
        help=f"also seed tenant {EXTRA_TENANT} and keep the simulator up (on BATCH_PLATFORM_URL's port) until Ctrl-C",
    )
    args = parser.parse_args(argv)



    quiet_prefect()
    seeded = TENANTS + ((EXTRA_TENANT,) if args.keep_running else ())
    port = (urlsplit(get_settings().platform_url).port or 80) if args.keep_running else 0
    try:
        sim = PlatformSimulator(latency_ms=args.latency_ms, port=port)
    except OSError as exc:
        print(f"error: cannot serve the simulator on port {port}: {exc.strerror} "
              "(another quick start still running? set BATCH_PLATFORM_URL to a free port)", file=sys.stderr)
        return 2
    with sim:
        os.environ["BATCH_PLATFORM_URL"] = sim.url
        get_settings.cache_clear()
        url = database_url()
        upgrade(url)
        engine = get_engine(url)
        sim.seed({t: args.accounts for t in seeded}, banned_fraction=0.1, restricted_fraction=0.05)
        with engine.begin() as conn:  # a re-run starts from this run's simulated accounts only
            conn.execute(text("DELETE FROM la_alt_account WHERE tenant_id IN :t").bindparams(
                bindparam("t", expanding=True)), {"t": list(seeded)})
        import_accounts(engine, sim.accounts())

        with engine.connect() as conn:
            first_id = (conn.execute(text("SELECT COALESCE(MAX(id), 0) FROM la_batch_task")).scalar() or 0) + 1
        print(f"platform simulator on {sim.url}; mirror at {engine.url.render_as_string(hide_password=True)}")
        messages = asyncio.run(quickstart(list(TENANTS)))
        drain_ephemeral_api()
        print("\n" + "\n".join(messages))
        _print_rows(engine, first_id)
        print(f"\nplatform calls: {sim.stats()['total']}")
        if args.keep_running:
            _fail_next_calls(sim, EXTRA_TENANT, FAILING, 1 + get_settings().http_max_retries)
            _serve_until_interrupted(sim.url)
    return 0


def _fail_next_calls(sim, tenant_id: int, count: int, attempts: int) -> None:
    """The last ``count`` accounts of the tenant answer HTTP 500 to the ``attempts`` calls of their next check."""
    for account in sim.accounts(tenant_id)[-count:]:
        sim.script(account["uid"], *["500"] * attempts)


def _serve_until_interrupted(url: str) -> None:
    print(f"""
The platform simulator keeps serving tenants {", ".join(map(str, TENANTS))} and {EXTRA_TENANT} on {url} until Ctrl-C.
In a second terminal, in this directory, try:

  python -m flows.account_check --tenant-id {EXTRA_TENANT}
  python -m flows.account_check --retry-failed BATCH_ID   # the id printed by the command above
  python -m flows.nickname_change --tenant-id {EXTRA_TENANT} --items '[{{"account_id": {EXTRA_TENANT}00001, "nickname": "Ann"}}]'
""", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print("simulator stopped")


if __name__ == "__main__":
    sys.exit(main())
