"""The deployed system, end to end: the session's real Prefect server (deployments/local_server.py),
``python -m deployments.bootstrap --deploy`` from prefect.yaml, two real ``prefect worker``
subprocesses (each with its own checkout of the repository, as two hosts would have), a
MariaDB database, Redis and the platform simulator.

One deployment of everything per session (deploying costs seconds); each test uses its own
tenants so the batches never meet. Nothing else is started by hand: the server's scheduler
creates the maintenance runs from the deployed schedule (they dispatch admin-panel rows and
reap and resume dead batches). nightly-check and prune are paused; tests start them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from batchlib.seeding import import_accounts
from db import make_engine
from deployments.spec import REPO_ROOT
from simulators.account_platform import PlatformSimulator
from tests.support.deployed import (
    KILL_TENANT_CONCURRENCY,
    KILL_TENANTS,
    TENANTS,
    Deployed,
    Worker,
    pause_schedules,
    second_checkout,
)
from tests.support.services import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER, REDIS_URL, mysql_admin


@pytest.fixture(scope="package")
def e2e_mysql_url() -> Iterator[str]:
    name = f"e2e_{uuid.uuid4().hex[:10]}"
    admin = mysql_admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield f"mysql+pymysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}/{name}?charset=utf8mb4"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


# Package scope: the workers and their maintenance run stop when tests/deployments ends, so they
# neither load the rest of the suite nor dispatch onto deployments that later tests serve on the
# same server (the browser test's served account-check).
@pytest.fixture(scope="package")
def deployed(prefect_server, e2e_mysql_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("e2e")
    prefix = f"test:e2e:{uuid.uuid4().hex[:8]}:"
    with PlatformSimulator() as sim:
        sim.seed(TENANTS, banned_fraction=0.1)
        env = {
            **prefect_server.env,
            "BATCH_DATABASE_URL": e2e_mysql_url,
            "BATCH_REDIS_URL": REDIS_URL,
            "BATCH_REDIS_KEY_PREFIX": prefix,
            "BATCH_PLATFORM_URL": sim.url,
            "BATCH_REPO_DIR": str(REPO_ROOT),
            "BATCH_CONCURRENCY": "10",
            "BATCH_CONCURRENCY_PER_TENANT": json.dumps({str(t): KILL_TENANT_CONCURRENCY for t in KILL_TENANTS}),
            "PREFECT_LOGGING_LEVEL": "INFO",
            # No PREFECT_FLOWS_HEARTBEAT_FREQUENCY here: prefect.yaml's job variables give every run its
            # heartbeat (the kill test's zombie automation relies on it).
            "PREFECT_WORKER_QUERY_SECONDS": "5",  # docs/operations.md: halves the pick-up share of dispatch
        }
        boot = subprocess.run(
            [sys.executable, "-m", "deployments.bootstrap", "--deploy"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
        )
        assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]
        engine = make_engine(e2e_mysql_url)
        import_accounts(engine, sim.accounts())
        worker = Worker("e2e-worker-1", env, REPO_ROOT, tmp)
        worker2 = Worker("e2e-worker-2", env, second_checkout(tmp / "host2"), tmp)
        system = Deployed(prefect_server.api_url, env, engine, sim, worker, worker2, tmp,
                          prefect_server.home / "server.log")
        system.timings["bootstrap+deploy_s"] = time.monotonic() - started
        pause_schedules(system, ["nightly-check/nightly-check", "prune/prune"])
        worker.start()
        worker2.start()
        try:
            yield system
        finally:
            worker.stop()
            worker2.stop()
            engine.dispose()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()
            print("\ne2e timings:", {k: round(v, 1) for k, v in system.timings.items()})


@pytest.fixture
def system(deployed: Deployed) -> Deployed:
    """The deployed system with both workers live (a previous test may have killed one)."""
    deployed.worker.ensure_running()
    deployed.worker2.ensure_running()
    deployed.sim.configure(latency_ms=20)
    return deployed
