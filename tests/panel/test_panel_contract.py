"""The admin panel's contract, played from outside with SQL alone.

The PHP panel is stood in for by the statements of docs/database.md ("For the admin panel"),
sent with PyMySQL to a MariaDB database created from the panel's original DDL (db/ddl.py) with
our migrations run on top. Everything else is real: the dispatcher (``dispatch_once`` in a flow
run), account-check runs served by a ``prefect serve`` subprocess against the session's Prefect
server, Redis, and the platform simulator, whose call log says which platform calls happened
when. After each case: the mirror (counters equal a recount), the call log (nothing called after
the cancel was seen, beyond the calls already in flight) and the dispatcher still starting rows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis
from prefect import flow

from batchlib.seeding import account_id_for, import_accounts
from batchlib.settings import get_settings
from db import counters, make_engine, recount, run_transaction
from db.ddl import ORIGINAL_DDL
from db.migrate import upgrade
from deployments.spec import REPO_ROOT
from flows.dispatcher import dispatch_once
from simulators.account_platform import PlatformSimulator
from tests.support.deployed import wait_for
from tests.support.services import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    REDIS_URL,
    mysql_admin,
)

# -- the panel's statements, exactly as docs/database.md gives them (PDO placeholders) ----------

INSERT_BATCH = (
    "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data, create_admin_id,"
    " create_time, update_time) VALUES (?, ?, ?, 'pending', ?, ?, UNIX_TIMESTAMP(), UNIX_TIMESTAMP())"
)
CANCEL_BATCH = (
    "UPDATE la_batch_task SET task_status = 'cancelled', update_time = UNIX_TIMESTAMP()"
    " WHERE id = ? AND task_status IN ('pending', 'running') AND delete_time IS NULL"
)
DELETE_BATCH = (
    "UPDATE la_batch_task SET delete_time = UNIX_TIMESTAMP(), update_time = UNIX_TIMESTAMP()"
    " WHERE id = ? AND delete_time IS NULL"
)
READ_PROGRESS = (
    "SELECT id, tenant_id, task_name, task_type, task_status, total_count, processed_count, success_count,"
    " failed_count, error_message, start_time, end_time, update_time, delete_time FROM la_batch_task WHERE id = ?"
)
LIST_BATCHES = (
    "SELECT id, task_name, task_type, task_status, total_count, processed_count, success_count, failed_count,"
    " start_time, end_time FROM la_batch_task WHERE tenant_id = ? AND delete_time IS NULL ORDER BY id DESC LIMIT 20"
)
READ_DETAILS = (
    "SELECT item_id, item_data, status, result, error_message, process_time FROM la_batch_task_detail"
    " WHERE task_id = ? ORDER BY id LIMIT ? OFFSET ?"
)
PANEL_STATEMENTS = [INSERT_BATCH, CANCEL_BATCH, DELETE_BATCH, READ_PROGRESS, LIST_BATCHES, READ_DETAILS]

CONCURRENCY = 4
FLUSH_INTERVAL_S = 0.2
LATENCY_MS = 250
SLOW_LATENCY_MS = 2000  # a batch of 40 then runs ~20 s: time to act on it while it runs, even on a busy host
TENANTS = {21: 30, 22: 5, 23: 5, 24: 40, 25: 40, 26: 40, 27: 5, 28: 5, 29: 5}
FINAL = ("completed", "failed", "cancelled")

# Rows the dispatcher must fail alone, with a readable error_message, while it starts the others:
# (task_type, task_data as the panel stores it, words the error_message contains).
HOSTILE_ROWS = [
    ("teleport", "{}", "unknown task_type 'teleport'"),
    ("account_check", "{account_ids: [1", "not valid JSON"),
    ("account_check", "[1, 2]", "must be a JSON object, got list"),
    ("account_check", "[" * 30_000 + "]" * 30_000, "nested more than"),  # 60 KB: fits the TEXT column
    ("account_check", '{"acount_ids": [1]}', "unknown key(s) 'acount_ids'"),  # never widened to every account
    ("account_check", '{"account_ids": [NaN]}', "NaN is not a number JSON allows"),
]


@flow(name="panel-contract-dispatch")
def _dispatch_pass(deployments: dict[str, str]) -> dict:
    return dict(dispatch_once(deployments=deployments))


@dataclass
class Panel:
    """The admin panel (SQL only) plus what the test watches: the simulator and the dispatcher."""

    conn: pymysql.connections.Connection
    url: str
    sim: PlatformSimulator
    deployments: dict[str, str]
    serve_log: Path

    # -- what the panel does -------------------------------------------------------------
    def _run(self, statement: str, *params: Any) -> tuple[int, list[dict[str, Any]], int]:
        with self.conn.cursor(pymysql.cursors.DictCursor) as cur:
            affected = cur.execute(statement.replace("?", "%s"), params)
            return affected, list(cur.fetchall()), int(cur.lastrowid or 0)

    def insert(self, tenant_id: int, task_data: str = "{}", task_type: str = "account_check") -> int:
        affected, _, batch_id = self._run(INSERT_BATCH, tenant_id, f"panel batch of {tenant_id}", task_type, task_data, 1)
        assert affected == 1
        return batch_id

    def cancel(self, batch_id: int) -> int:
        return self._run(CANCEL_BATCH, batch_id)[0]

    def delete(self, batch_id: int) -> int:
        return self._run(DELETE_BATCH, batch_id)[0]

    def progress(self, batch_id: int) -> dict[str, Any]:
        return self._run(READ_PROGRESS, batch_id)[1][0]

    def listed(self, tenant_id: int) -> list[int]:
        return [r["id"] for r in self._run(LIST_BATCHES, tenant_id)[1]]

    def details(self, batch_id: int) -> list[dict[str, Any]]:
        out, offset = [], 0
        while page := self._run(READ_DETAILS, batch_id, 50, offset)[1]:
            out += page
            offset += len(page)
        return out

    # -- what the test watches -----------------------------------------------------------
    def dispatch(self) -> dict:
        return _dispatch_pass(self.deployments)

    def wait_final(self, batch_id: int, timeout: float = 90, dispatching: bool = True) -> dict[str, Any]:
        """Wait for the batch to end; meanwhile the dispatcher passes every 0.5 s (as its deployment polls)."""

        def ended() -> dict[str, Any] | None:
            row = self.progress(batch_id)
            if row["end_time"] is not None and row["task_status"] in FINAL:
                return row
            if dispatching:
                self.dispatch()
            return None

        return wait_for(ended, timeout, interval=0.5, what=f"batch {batch_id} to end")

    def calls(self, tenant_id: int) -> list[dict[str, Any]]:
        return sorted((c for c in self.sim.calls(endpoint="GET /v1/me") if c["tenant_id"] == tenant_id),
                      key=lambda c: c["t"])

    def assert_consistent(self, batch_id: int) -> None:
        """Counters equal a GROUP BY recount (I3); total = detail rows (I1); an ended batch has
        no pending detail rows unless it was cancelled, and then its error_message says how many."""
        engine = make_engine(self.url)
        try:
            stored = run_transaction(engine, lambda s: counters(s, batch_id))
            actual = run_transaction(engine, lambda s: recount(s, batch_id))
        finally:
            engine.dispose()
        assert (stored.total, stored.processed, stored.success, stored.failed) == (
            actual.total, actual.processed, actual.success, actual.failed
        )
        row = self.progress(batch_id)
        if row["task_status"] == "cancelled" and actual.pending:
            assert row["error_message"].startswith(
                f"cancelled: {actual.pending} of {actual.total} items not processed"
            ), row["error_message"]
        elif row["task_status"] in FINAL:
            assert actual.pending == 0

    def flow_run_state(self, batch_id: int):
        from prefect.client.orchestration import get_client

        with self.conn.cursor() as cur:
            cur.execute("SELECT flow_run_id FROM la_batch_run WHERE task_id = %s", (batch_id,))
            (flow_run_id,) = cur.fetchone()
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state


def _serve(env: dict[str, str], name: str, log: Path) -> subprocess.Popen:
    """account-check served under ``name`` from a subprocess: flow runs start as its children."""
    code = (
        "from prefect import serve\n"
        "from flows.account_check import account_check\n"
        f"serve(account_check.to_deployment(name={name!r}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def panel(prefect_server, prefect_api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    name = f"panel_{uuid.uuid4().hex[:10]}"
    url = f"mysql+pymysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}/{name}?charset=utf8mb4"
    admin = mysql_admin()
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                           database=name, autocommit=True, charset="utf8mb4")
    with conn.cursor() as cur:
        for ddl in ORIGINAL_DDL.values():  # an existing installation: the panel made its tables
            cur.execute(ddl)
    upgrade(url)
    prefix = f"test:panel:{uuid.uuid4().hex[:8]}:"
    deployment = f"panel-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("panel") / "serve.log"
    batch_env = {
        "BATCH_DATABASE_URL": url, "BATCH_REDIS_URL": REDIS_URL, "BATCH_REDIS_KEY_PREFIX": prefix,
        "BATCH_CONCURRENCY": str(CONCURRENCY), "BATCH_FLUSH_INTERVAL_S": str(FLUSH_INTERVAL_S),
        "BATCH_CANCEL_POLL_S": "0.5",
    }
    saved = {k: os.environ.get(k) for k in batch_env}
    sim = PlatformSimulator(latency_ms=LATENCY_MS).start()
    server = None
    try:
        sim.seed(TENANTS)
        engine = make_engine(url)
        import_accounts(engine, sim.accounts())
        engine.dispose()
        batch_env["BATCH_PLATFORM_URL"] = sim.url
        os.environ.update(batch_env)  # the dispatcher in this process reads the same settings
        get_settings.cache_clear()
        server = _serve({**prefect_server.env, **batch_env, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                         "PREFECT_LOGGING_LEVEL": "INFO"}, deployment, log)
        from prefect.client.orchestration import get_client

        def deployed() -> bool:
            try:
                with get_client(sync_client=True) as client:
                    client.read_deployment_by_name(f"account-check/{deployment}")
                return True
            except Exception:
                assert server.poll() is None, log.read_text(errors="replace")[-3000:]
                return False

        wait_for(deployed, 90, interval=0.5, what="the served deployment")
        yield Panel(conn, url, sim, {"account_check": f"account-check/{deployment}"}, log)
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        sim.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture(scope="module", autouse=True)
def _report_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    figures = getattr(request.module, "FIGURES", {})
    if figures:
        print("\npanel contract figures:", {k: round(v, 3) for k, v in figures.items()})


FIGURES: dict[str, float] = {}


@pytest.fixture
def slow_platform(panel: Panel) -> Iterator[Panel]:
    panel.sim.configure(latency_ms=SLOW_LATENCY_MS)
    try:
        yield panel
    finally:
        panel.sim.configure(latency_ms=LATENCY_MS)


@pytest.fixture(autouse=True)
def _no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed case must not leave rows that later cases' dispatcher passes would start."""
    yield
    if "panel" not in request.fixturenames:
        return
    panel: Panel = request.getfixturevalue("panel")
    with panel.conn.cursor() as cur:
        cur.execute("SELECT id FROM la_batch_task WHERE end_time IS NULL AND task_status IN ('pending', 'running')")
        open_rows = [int(i) for (i,) in cur.fetchall()]
    for batch_id in open_rows:
        panel.cancel(batch_id)
    for batch_id in open_rows:
        if panel.progress(batch_id)["start_time"] is not None:
            panel.wait_final(batch_id, dispatching=False)


# -- the cases ---------------------------------------------------------------------------------


def test_the_statements_are_the_documented_ones() -> None:
    doc = " ".join((REPO_ROOT / "docs" / "database.md").read_text(encoding="utf-8").split())
    for statement in PANEL_STATEMENTS:
        assert " ".join(statement.split()) in doc, statement


def test_insert_then_watch_progress_to_the_end(panel: Panel) -> None:
    batch_id = panel.insert(21)
    assert panel.dispatch() == {"started": 1}
    seen = []

    def ended() -> bool:
        row = panel.progress(batch_id)
        seen.append((row["task_status"], row["processed_count"], row["total_count"]))
        return row["end_time"] is not None

    wait_for(ended, 90, interval=0.1, what=f"batch {batch_id} to end")
    row = panel.progress(batch_id)
    assert (row["task_status"], row["total_count"], row["success_count"]) == ("completed", 30, 30)
    processed = [p for status, p, _ in seen if status == "running"]
    assert processed == sorted(processed) and any(0 < p < 30 for p in processed), seen  # live progress
    details = panel.details(batch_id)
    assert len(details) == 30 and {d["status"] for d in details} == {"success"}
    assert all(json.loads(d["result"])["status"] == "alive" and d["process_time"] for d in details)
    assert batch_id in panel.listed(21)
    panel.assert_consistent(batch_id)
    calls = panel.calls(21)
    assert sorted(account_id_for(c["uid"]) for c in calls) == sorted(d["item_id"] for d in details)  # once each
    assert panel.sim.stats()["max_in_flight_by_tenant"]["21"] <= CONCURRENCY


def test_cancel_before_dispatch_starts_nothing(panel: Panel) -> None:
    batch_id = panel.insert(22)
    assert panel.cancel(batch_id) == 1
    assert panel.dispatch() == {}
    row = panel.progress(batch_id)
    assert (row["task_status"], row["start_time"], row["total_count"]) == ("cancelled", None, 0)
    assert panel.details(batch_id) == [] and panel.calls(22) == []


def test_cancel_after_dispatch_before_the_claim_is_never_started(panel: Panel) -> None:
    batch_id = panel.insert(23)
    assert panel.dispatch() == {"started": 1}
    assert panel.cancel(batch_id) == 1  # its flow run exists; its process is still starting
    state = wait_for(lambda: (s := panel.flow_run_state(batch_id)) and s.is_final() and s, 90, interval=0.5,
                     what="the run to end")
    assert state.is_cancelled() and "was cancelled before it started" in (state.message or ""), state
    row = panel.progress(batch_id)
    assert (row["task_status"], row["start_time"], row["total_count"]) == ("cancelled", None, 0)
    assert panel.details(batch_id) == [] and panel.calls(23) == []


def _running(panel: Panel, tenant_id: int, after: int) -> int:
    """A panel row, dispatched, with at least ``after`` items recorded."""
    batch_id = panel.insert(tenant_id)
    assert panel.dispatch() == {"started": 1}
    wait_for(lambda: panel.progress(batch_id)["processed_count"] >= after, 90, interval=0.05,
             what=f"{after} items of batch {batch_id}")
    return batch_id


def _assert_stopped_promptly(panel: Panel, tenant_id: int, at: float, what: str) -> None:
    """No call after the run saw the cancel (one flush, one watcher tick), beyond those in flight."""
    calls = panel.calls(tenant_id)
    late = [c for c in calls if c["t"] > at]
    FIGURES[f"{what}: last call after the panel's UPDATE (s)"] = max((c["t"] - at for c in late), default=0.0)
    FIGURES[f"{what}: calls started after it"] = len(late)
    # The run reads the row every flush interval; a call later than that (plus the read itself)
    # started after the run could have seen the cancel. One platform latency (2 s) is too late.
    assert all(c["t"] - at <= FLUSH_INTERVAL_S + 0.4 for c in late), [round(c["t"] - at, 2) for c in late]
    assert len(late) <= CONCURRENCY
    total = panel.sim.stats()["total"]
    time.sleep(1.0)
    assert panel.calls(tenant_id)[-1:] == calls[-1:] and panel.sim.stats()["total"] >= total


def test_cancel_while_running_stops_the_platform_calls(slow_platform: Panel) -> None:
    panel = slow_platform
    batch_id = _running(panel, 24, after=8)
    at = time.monotonic()
    assert panel.cancel(batch_id) == 1
    row = panel.wait_final(batch_id, dispatching=False)
    FIGURES["cancel: panel UPDATE to end_time (s)"] = time.monotonic() - at
    assert row["task_status"] == "cancelled" and 8 <= row["processed_count"] < 40, row
    _assert_stopped_promptly(panel, 24, at, "cancel")
    panel.assert_consistent(batch_id)
    # Unreached items stay pending, unprocessed; the batch row says how many.
    pending = [d for d in panel.details(batch_id) if d["status"] == "pending"]
    assert pending and all(d["process_time"] is None and d["result"] is None for d in pending)
    assert row["error_message"].startswith(f"cancelled: {len(pending)} of 40 items not processed")
    assert len(panel.calls(24)) <= row["processed_count"] + CONCURRENCY  # each reached item once


def test_soft_delete_while_running_stops_it_and_the_next_row_waits(slow_platform: Panel) -> None:
    panel = slow_platform
    first = _running(panel, 25, after=5)
    second = panel.insert(25)  # the panel's INSERT succeeds while the first runs (no 1062)
    outcome = panel.dispatch()
    assert outcome == {"queued": 1}, (outcome, panel.progress(first), panel.progress(second))
    at = time.monotonic()
    assert panel.delete(first) == 1
    ended = panel.wait_final(first, dispatching=False)
    FIGURES["soft delete: panel UPDATE to end_time (s)"] = time.monotonic() - at
    assert ended["task_status"] == "cancelled" and ended["delete_time"] is not None
    assert first not in panel.listed(25) and second in panel.listed(25)
    _assert_stopped_promptly(panel, 25, at, "soft delete")
    panel.assert_consistent(first)
    panel.sim.configure(latency_ms=LATENCY_MS)
    done = panel.wait_final(second)
    assert done["task_status"] == "completed" and done["start_time"] >= ended["end_time"]
    panel.assert_consistent(second)
    # The second batch's calls began after the first's last call had ended: never both at once.
    calls = panel.calls(25)
    first_calls, second_calls = calls[: len(calls) - 40], calls[len(calls) - 40 :]
    assert sorted(account_id_for(c["uid"]) for c in second_calls) == sorted(d["item_id"] for d in panel.details(second))
    assert min(c["t"] for c in second_calls) >= max(c["end"] for c in first_calls)


def test_a_duplicate_active_row_is_queued_and_other_rows_go_on(slow_platform: Panel) -> None:
    panel = slow_platform
    first = panel.insert(26)
    assert panel.dispatch() == {"started": 1}
    wait_for(lambda: panel.progress(first)["task_status"] == "running", 60, interval=0.2, what=f"batch {first} to run")
    second = panel.insert(26)  # same tenant and type as a running batch: accepted, queued
    other = panel.insert(27)
    assert panel.dispatch() == {"queued": 1, "started": 1}
    assert panel.progress(second)["task_status"] == "pending"  # behind the first
    panel.sim.configure(latency_ms=LATENCY_MS)
    assert panel.wait_final(other)["task_status"] == "completed"
    one = panel.wait_final(first)
    two = panel.wait_final(second)
    assert (one["task_status"], two["task_status"]) == ("completed", "completed")
    assert two["start_time"] >= one["end_time"]
    for batch_id in (first, second, other):
        panel.assert_consistent(batch_id)
    assert panel.sim.stats()["max_in_flight_by_tenant"]["26"] <= CONCURRENCY


@pytest.mark.parametrize(("task_type", "task_data", "words"), HOSTILE_ROWS, ids=[w[:30] for _, _, w in HOSTILE_ROWS])
def test_a_hostile_row_fails_alone(panel: Panel, task_type: str, task_data: str, words: str) -> None:
    hostile = panel.insert(28, task_data, task_type)
    good = panel.insert(29)
    outcome = panel.dispatch()
    assert outcome.get("started") == 1, outcome
    row = panel.progress(hostile)
    assert row["task_status"] == "failed" and row["end_time"] and re.search(re.escape(words), row["error_message"]), row
    assert panel.wait_final(good)["task_status"] == "completed"
    panel.assert_consistent(good)
