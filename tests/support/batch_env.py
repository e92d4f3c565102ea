"""One flow test's world (BatchEnv: its own MariaDB database, Redis prefix and simulator) and settings overrides."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, text

from batchlib.seeding import account_id_for, import_accounts
from batchlib.settings import get_settings
from db import counters, get_engine, recount, run_transaction, upgrade
from simulators.account_platform import PlatformSimulator

if TYPE_CHECKING:
    pass


@dataclass
class BatchEnv:
    """One test's world: its own MariaDB database, Redis prefix and simulator."""

    url: str
    engine: Engine
    sim: PlatformSimulator
    redis_prefix: str | None

    def seed(self, tenants: dict[int, int], **kwargs) -> list[int]:
        self.sim.seed(tenants, **kwargs)
        accounts = [a for t in tenants for a in self.sim.accounts(t)]
        return import_accounts(self.engine, accounts)

    def uid_calls(self, endpoint: str = "GET /v1/me") -> dict[int, int]:
        """Platform calls per account id, from the simulator's log."""
        seen: dict[int, int] = {}
        for call in self.sim.calls(endpoint=endpoint):
            account_id = account_id_for(call["uid"]) if call.get("uid") else None
            if account_id is not None:
                seen[account_id] = seen.get(account_id, 0) + 1
        return seen

    def sql(self, query: str, **params):
        with self.engine.begin() as conn:
            result = conn.execute(text(query), params)
            return result.all() if result.returns_rows else result.rowcount

    def batch(self, batch_id: int) -> dict:
        row = self.sql("SELECT * FROM la_batch_task WHERE id = :id", id=batch_id)[0]
        return dict(row._mapping)

    def assert_consistent(self, batch_id: int) -> None:
        """I1-I3: counters equal a recount; a finished batch has no pending rows unless cancelled."""
        stored = run_transaction(self.engine, lambda s: counters(s, batch_id))
        actual = run_transaction(self.engine, lambda s: recount(s, batch_id))
        assert (stored.total, stored.success, stored.failed, stored.processed) == (
            actual.total, actual.success, actual.failed, actual.processed
        )
        status = self.batch(batch_id)["task_status"]
        if status in ("completed", "failed"):
            assert actual.pending == 0 or status == "failed"
        if status == "completed":
            assert actual.pending == 0

    def cancel_from_panel(self, flow_call, *, after: int = 10):
        """Run ``flow_call`` (a coroutine); once ``after`` items are recorded, set the row to
        ``cancelled`` as the admin panel does. Returns (batch id, final flow state)."""

        async def run():
            flow = asyncio.create_task(flow_call)
            while True:
                await asyncio.sleep(0.1)
                rows = self.sql("SELECT id, processed_count FROM la_batch_task")
                if rows and rows[0].processed_count >= after:
                    break
            self.sql("UPDATE la_batch_task SET task_status='cancelled' WHERE id=:id", id=rows[0].id)
            return rows[0].id, await flow

        return asyncio.run(run())

    def insert_pending(self, tenant_id: int, task_type: str, task_data: dict | str) -> int:
        """A pending row inserted the way the admin panel does it."""
        now = int(time.time())
        data = task_data if isinstance(task_data, str) else json.dumps(task_data)
        with self.engine.begin() as conn:
            result = conn.execute(
                text(
                    "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data,"
                    " create_admin_id, create_time, update_time) VALUES (:t, 'from panel', :type,"
                    " 'pending', :data, 1, :now, :now)"
                ),
                {"t": tenant_id, "type": task_type, "data": data, "now": now},
            )
            return int(result.lastrowid)


def configure_env(monkeypatch: pytest.MonkeyPatch, **env: object) -> None:
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(f"BATCH_{key.upper()}", raising=False)
        else:
            monkeypatch.setenv(f"BATCH_{key.upper()}", str(value))
    get_settings.cache_clear()


def make_batch_env(
    monkeypatch: pytest.MonkeyPatch, mysql_url: str, redis_url: str, redis_prefix: str, **settings: object
) -> Iterator[BatchEnv]:
    """Settings (the test defaults plus ``settings``), migrations, a simulator: one test's world."""
    with PlatformSimulator(latency_ms=5) as sim:
        configure_env(
            monkeypatch, database_url=mysql_url, redis_url=redis_url, redis_key_prefix=redis_prefix,
            platform_url=sim.url, concurrency=20, flush_interval_s=0.2, cancel_poll_s=0.5,
            http_backoff_base_s=0.01, http_backoff_max_s=0.05, **settings,
        )
        upgrade(mysql_url)
        yield BatchEnv(mysql_url, get_engine(mysql_url), sim, redis_prefix)
    get_settings.cache_clear()


def items_of(env: BatchEnv, batch_id: int) -> dict[int, tuple[str, str | None, str | None]]:
    """item_id -> (status, result JSON, error_message) of a batch's detail rows."""
    rows = env.sql("SELECT item_id, status, result, error_message FROM la_batch_task_detail WHERE task_id = :b", b=batch_id)
    return {r.item_id: (r.status, r.result, r.error_message) for r in rows}

