"""The deployed system of the e2e tests: workers, the Deployed handle, waits (fixtures: tests/deployments/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, text

from batchlib.seeding import account_id_for
from db import counters, recount, run_transaction
from deployments.spec import REPO_ROOT
from simulators.account_platform import PlatformSimulator

T = TypeVar("T")

# Tenants and their accounts; each test owns some of them.
TENANTS = {7: 60, 8: 40, 9: 300, 10: 300, 11: 5, 12: 5}
KILL_TENANTS = (13, 14, 15, 16, 17, 18)  # the two-worker kill test seeds them itself: six tenants at once
KILL_TENANT_CONCURRENCY = 3  # its batches run about a minute each, so all six run at once on a busy host
POOL = "batch-pool"
# Flow runs per worker: six batches plus a maintenance run (7) must spread over both workers (with
# 6, one worker took all six batches). The survivor of the kill test has 2-3 free slots for the
# resumed batches, which run 80 s at most, so they resume in two rounds.
WORKER_LIMIT = 5


def wait_for(check: Callable[[], T], timeout: float, interval: float = 0.25, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (flow-run processes may sit in their own session)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Worker:
    """A ``prefect worker start --pool batch-pool`` subprocess in its own process group, run
    from its own checkout (``BATCH_REPO_DIR``), as on a host of its own."""

    def __init__(self, name: str, env: dict[str, str], repo_dir: Path, log_dir: Path) -> None:
        self.name, self.repo_dir, self.log_dir = name, repo_dir, log_dir
        self.env = {**env, "BATCH_REPO_DIR": str(repo_dir)}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process",
             "--name", self.name, "--limit", str(WORKER_LIMIT)],
            cwd=self.log_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()

    def kill(self) -> list[int]:
        """SIGKILL the worker and every flow-run process under it, at once."""
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def log(self, tail: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-tail:] for p in sorted(self.log_dir.glob(f"{self.name}-*.log")))

    def flow_run_ids(self) -> set[str]:
        """Flow runs this worker started: every worker tries each run it sees, and all but the
        one whose PENDING transition wins log "Aborted submission"."""
        log = self.log(tail=10**8)
        tried = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", log))
        return tried - set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", log))


@dataclass
class Deployed:
    """The deployed system as a test sees it."""

    api_url: str
    env: dict[str, str]
    engine: Engine
    sim: PlatformSimulator
    worker: Worker
    worker2: Worker
    tmp: Path
    server_log: Path
    timings: dict[str, float] = field(default_factory=dict)

    # -- processes ---------------------------------------------------------------
    def run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A command with the worker's environment (CLI, python -m ...), from the repo root."""
        result = subprocess.run(
            list(args), cwd=REPO_ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        return result

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(api=self.api_url, auth_string=self.env.get("PREFECT_API_AUTH_STRING"))

    # -- the mirror --------------------------------------------------------------
    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            result = conn.execute(text(query), params)
            return result.all() if result.returns_rows else []

    def batch(self, batch_id: int) -> dict[str, Any]:
        return dict(self.sql("SELECT * FROM la_batch_task WHERE id = :id", id=batch_id)[0]._mapping)

    def batches_of(self, tenant_id: int) -> list[dict[str, Any]]:
        rows = self.sql("SELECT * FROM la_batch_task WHERE tenant_id = :t ORDER BY id", t=tenant_id)
        return [dict(r._mapping) for r in rows]

    def wait_status(self, batch_id: int, statuses: tuple[str, ...], timeout: float) -> dict[str, Any]:
        return wait_for(
            lambda: (b := self.batch(batch_id))["task_status"] in statuses and b,
            timeout, what=f"batch {batch_id} to become {'/'.join(statuses)}",
        )

    def detail_status(self, batch_id: int) -> dict[int, str]:
        rows = self.sql("SELECT item_id, status FROM la_batch_task_detail WHERE task_id = :id", id=batch_id)
        return {int(i): s for i, s in rows}

    def assert_consistent(self, batch_id: int) -> None:
        """Counters equal a GROUP BY recount of the details (I3), total = detail rows (I1)."""
        stored = run_transaction(self.engine, lambda s: counters(s, batch_id))
        actual = run_transaction(self.engine, lambda s: recount(s, batch_id))
        assert (stored.total, stored.processed, stored.success, stored.failed) == (
            actual.total, actual.processed, actual.success, actual.failed
        )

    def calls_by_account(self, since: float | None = None) -> dict[int, int]:
        seen: dict[int, int] = {}
        for call in self.sim.calls(endpoint="GET /v1/me", since=since):
            account_id = account_id_for(call["uid"]) if call.get("uid") else None
            if account_id is not None:
                seen[account_id] = seen.get(account_id, 0) + 1
        return seen


def second_checkout(path: Path) -> Path:
    """A copy of the working tree (what a second host's checkout holds), without .git and caches."""
    shutil.copytree(REPO_ROOT, path, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache"))
    return path


def pause_schedules(system: Deployed, names: list[str]) -> None:
    with system.client() as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)

