"""Prepare a Prefect server and the mirror database for the batch operations (idempotent).

    python -m deployments.bootstrap [--deploy] [--skip-migrations]

1. ``python -m db upgrade`` against ``BATCH_DATABASE_URL`` (additive migrations; existing
   admin-panel tables are kept);
2. the process work pool of prefect.yaml (``batch-pool``), created if missing;
3. with ``--deploy``: ``prefect deploy --all`` from the repository root.

Run it with ``PREFECT_API_URL`` pointing at the server. Safe to run again at any time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys

from batchlib.errors import BatchError
from deployments.spec import REPO_ROOT, work_pool_name

__all__ = ["ensure_work_pool", "migrate", "deploy_all", "main"]

log = logging.getLogger("deployments.bootstrap")


async def ensure_work_pool(name: str) -> bool:
    """Create the process work pool ``name`` if it does not exist; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != "process":
                raise SystemExit(f"work pool {name!r} exists with type {pool.type!r}, expected 'process'")
            return False
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=name,
                type="process",
                description="Batch operations (account checks, nickname/avatar changes, ...)",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ))
        except ObjectAlreadyExists:  # created by a concurrent bootstrap
            return False
        return True


def migrate() -> str | None:
    from db import current, upgrade

    upgrade()
    return current()


def deploy_all() -> None:
    subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", action="store_true", help="also run `prefect deploy --all`")
    parser.add_argument("--skip-migrations", action="store_true", help="do not touch the mirror database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.skip_migrations:
        try:
            log.info("mirror database at revision %s", migrate())
        except BatchError as exc:  # the accounts table is not what the settings describe
            print(f"error: {exc}", file=sys.stderr)
            return 2
    pool = work_pool_name()
    created = asyncio.run(ensure_work_pool(pool))
    log.info("work pool %r %s", pool, "created" if created else "already exists")
    if args.deploy:
        deploy_all()
    if not os.environ.get("BATCH_REPO_DIR"):
        log.info("reminder: workers need BATCH_REPO_DIR=<this checkout> (now: %s) in their environment", REPO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
