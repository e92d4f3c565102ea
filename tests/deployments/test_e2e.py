"""End to end: prefect.yaml deployed on a real server, a real worker, MariaDB, Redis, simulator.

Tests run in file order and share one deployment; each uses its own tenants.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Cancelling

from batchlib.seeding import import_accounts
from deployments.bootstrap import HEARTBEAT_FREQUENCY_S
from deployments.spec import REPO_ROOT, load_specs
from flows.dispatcher import DEPLOYMENTS
from tests.support.deployed import POOL, Deployed, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIRST_RUN_TIMEOUT = 90  # worker poll + a cold flow-run process


def _admin_insert(system: Deployed, tenant_id: int, task_type: str, task_data: str | None) -> int:
    """A pending row exactly as the admin panel writes it: plain SQL, task_data as JSON text."""
    now = int(time.time())
    with system.engine.begin() as conn:
        result = conn.exec_driver_sql(
            "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data,"
            " create_admin_id, create_time, update_time) VALUES (%s, %s, %s, 'pending', %s, 1, %s, %s)",
            (tenant_id, "后台批量任务", task_type, task_data, now, now),
        )
        return int(result.lastrowid)


def _flow_runs_tagged(system: Deployed, tag: str) -> list:
    with system.client() as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))


def _deployment_run(system: Deployed, name: str, *params: str) -> str:
    """``prefect deployment run NAME -p k=v ...``; returns the flow run id it printed."""
    args = ["prefect", "deployment", "run", name]
    for p in params:
        args += ["-p", p]
    out = system.run(*args, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout)
    assert match, out.stdout
    return match.group(1)


def _running_batch_of(system: Deployed, tenant_id: int, min_processed: int, timeout: float) -> dict:
    return wait_for(
        lambda: next(
            (b for b in system.batches_of(tenant_id)
             if b["task_status"] == "running" and b["processed_count"] >= min_processed),
            None,
        ),
        timeout, interval=0.1, what=f"a running batch of tenant {tenant_id} with {min_processed} items done",
    )


def test_prefect_yaml_is_deployed(system: Deployed) -> None:
    specs = {s.name: s for s in load_specs()}
    with system.client() as client:
        pool = client.read_work_pool(POOL)
        assert pool.type == "process"
        for spec in specs.values():
            flow_name = spec.entrypoint.rsplit(":", 1)[1].replace("_", "-")
            deployment = client.read_deployment_by_name(f"{flow_name}/{spec.name}")
            assert deployment.work_pool_name == POOL
            assert len(deployment.schedules) == len(spec.schedules)
            # Stored unresolved: each worker resolves it to its own checkout when a run starts
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BATCH_REPO_DIR }}"}}
            ]
            # Nothing secret stored with the deployment: only the heartbeat the zombie automation needs
            assert deployment.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_FREQUENCY_S)}}
            if spec.triggers:  # prefect deploy created the deployment's automations, each running it
                for trigger in spec.triggers:
                    (automation,) = client.read_automations_by_name(trigger["name"])
                    assert [getattr(a, "deployment_id", None) for a in automation.actions] == [deployment.id]
        for name in ("crash zombie flow runs", "replace a lost maintenance run"):  # by the bootstrap
            assert len(client.read_automations_by_name(name)) == 1, name
    for deployment in DEPLOYMENTS.values():  # every dispatched type has its deployment
        assert deployment.split("/")[1] in specs
    assert {"dispatcher", "reaper"}.isdisjoint(specs)  # one scheduled maintenance deployment does both


def test_cli_run_completes_the_mirror(system: Deployed) -> None:
    started = time.monotonic()
    _deployment_run(system, "account-check/account-check", "tenant_id=7")
    batch = wait_for(lambda: system.batches_of(7), FIRST_RUN_TIMEOUT, what="tenant 7's batch row")[0]
    batch = system.wait_status(batch["id"], ("completed", "failed", "cancelled"), 60)
    system.timings["cli_run_to_completed_s"] = time.monotonic() - started
    assert batch["task_status"] == "completed", batch
    assert batch["total_count"] == 60 and batch["processed_count"] == 60
    system.assert_consistent(batch["id"])


def test_admin_panel_rows_are_dispatched(system: Deployed) -> None:
    """The scheduled maintenance run completes a valid row within 30 s and fails unstartable ones."""
    ids = sorted(system.sql("SELECT id FROM la_alt_account WHERE tenant_id = 8 ORDER BY id LIMIT 25"))
    account_ids = [int(i) for (i,) in ids]
    good = _admin_insert(system, 8, "account_check", json.dumps({"account_ids": account_ids}))
    inserted = time.monotonic()
    unknown = _admin_insert(system, 11, "teleport_accounts", json.dumps({"account_ids": [1]}))
    not_json = _admin_insert(system, 11, "account_check", "{account_ids: [1, 2")
    not_object = _admin_insert(system, 12, "account_check", "[1, 2, 3]")

    running = system.wait_status(good, ("running", "completed", "failed"), 30)
    system.timings["admin_insert_to_running_s"] = time.monotonic() - inserted
    done = system.wait_status(good, ("completed", "failed", "cancelled"), 30 - (time.monotonic() - inserted))
    system.timings["admin_insert_to_completed_s"] = time.monotonic() - inserted
    assert running and done["task_status"] == "completed", done
    assert done["total_count"] == 25 and done["success_count"] + done["failed_count"] == 25
    system.assert_consistent(good)
    assert len(_flow_runs_tagged(system, f"batch-{good}")) == 1  # one run per row

    for batch_id, words in ((unknown, "unknown task_type"), (not_json, "not valid JSON"),
                            (not_object, "must be a JSON object")):
        row = system.wait_status(batch_id, ("failed",), 30)
        assert words in row["error_message"], row
        assert row["end_time"] is not None
        assert not _flow_runs_tagged(system, f"batch-{batch_id}")


def test_cancel_from_the_api_stops_the_batch(system: Deployed) -> None:
    system.sim.configure(latency_ms=250)
    flow_run_id = _deployment_run(system, "account-check/account-check", "tenant_id=10")
    batch = _running_batch_of(system, 10, 20, FIRST_RUN_TIMEOUT)
    cancelled_at = time.monotonic()
    with system.client() as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the operator"))
    done = system.wait_status(batch["id"], ("cancelled", "failed", "completed"), 45)
    system.timings["cancel_to_batch_cancelled_s"] = time.monotonic() - cancelled_at
    assert done["task_status"] == "cancelled", done
    system.assert_consistent(batch["id"])
    assert done["processed_count"] < done["total_count"]  # it really stopped early
    calls = system.sim.stats()["by_endpoint"].get("GET /v1/me", 0)
    time.sleep(3)
    assert system.sim.stats()["by_endpoint"].get("GET /v1/me", 0) == calls  # no platform calls after
    with system.client() as client:
        state = wait_for(
            lambda: (s := client.read_flow_run(flow_run_id).state) and s.is_final() and s, 30,
            what="the flow run to end",
        )
    assert state.is_cancelled(), state


def sys_python() -> str:
    import sys

    return sys.executable


def _wait_flow_run(system: Deployed, flow_run_id: str, timeout: float):
    with system.client() as client:
        return wait_for(
            lambda: (s := client.read_flow_run(flow_run_id).state) and s.is_final() and s,
            timeout, what=f"flow run {flow_run_id} to end",
        )


def test_10000_nicknames_from_a_deployment_run_with_an_items_file(system: Deployed) -> None:
    """What an operator does in the Prefect UI: a nickname-change run whose items_file parameter
    is a CSV of 10,000 items on the worker's host. A bad parameter fails the run in one line."""
    import csv

    tenant, n = 19, 10_000  # a tenant of its own: not in TENANTS, nor KILL_TENANTS (their batches check every account)
    system.sim.seed({tenant: n})
    import_accounts(system.engine, system.sim.accounts(tenant))
    path = system.tmp / "nicknames.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("account_id", "nickname"), *((tenant * 100_000 + i, f"ui {i}") for i in range(1, n + 1))])

    missing = _deployment_run(system, "nickname-change/nickname-change", f"tenant_id={tenant}",
                              f"items_file={system.tmp / 'missing.csv'}")
    state = _wait_flow_run(system, missing, FIRST_RUN_TIMEOUT)
    assert state.is_failed() and state.message == (
        "rejected: cannot read the items file missing.csv: No such file or directory"), state.message
    assert system.batches_of(tenant) == []

    _deployment_run(system, "nickname-change/nickname-change", f"tenant_id={tenant}", f"items_file={path}")
    (batch,) = wait_for(lambda: [b for b in system.batches_of(tenant) if b["task_status"] == "completed"] or None,
                        300, what="the 10,000-item batch to complete")
    assert (batch["total_count"], batch["success_count"]) == (n, n), batch
    assert json.loads(batch["task_data"]) == {"items_count": n, "source": "file:nicknames.csv"}
    system.assert_consistent(batch["id"])


def test_nightly_check_fans_out_one_run_per_idle_tenant(system: Deployed) -> None:
    now = int(time.time())
    with system.engine.begin() as conn:  # tenant 12 has an active check: it must be skipped
        busy = conn.exec_driver_sql(
            "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, create_admin_id,"
            " create_time, update_time) VALUES (12, 'still running', 'account_check', 'running', 1, %s, %s)",
            (now, now + 3600),  # seen alive for the next hour: the maintenance run's reaper leaves it alone
        ).lastrowid
    tenants = {int(t) for (t,) in system.sql("SELECT DISTINCT tenant_id FROM la_alt_account")}
    flow_run_id = _deployment_run(system, "nightly-check/nightly-check")
    state = _wait_flow_run(system, flow_run_id, FIRST_RUN_TIMEOUT)
    assert state.is_completed(), state
    started = _flow_runs_tagged(system, "nightly")
    assert sorted(int(r.parameters["tenant_id"]) for r in started) == sorted(tenants - {12})
    for run in started:
        assert _wait_flow_run(system, str(run.id), 240).type.value in ("COMPLETED", "FAILED")  # queued on 2 × 5 slots
    nightly = [b for t in tenants - {12} for b in system.batches_of(t) if b["task_name"].startswith("Nightly")]
    assert len(nightly) == len(tenants) - 1
    assert all(b["task_status"] == "completed" for b in nightly), nightly
    system.sql("UPDATE la_batch_task SET task_status = 'failed', end_time = update_time WHERE id = :id", id=busy)


def test_prune_removes_only_old_finished_batches(system: Deployed) -> None:
    day = 86_400
    now = int(time.time())
    rows = {  # name: (status, end_time or None, update_time)
        "old-completed": ("completed", now - 40 * day, now - 40 * day),
        "old-failed": ("failed", now - 31 * day, now - 31 * day),
        "old-cancelled-no-end": ("cancelled", None, now - 45 * day),
        "recent-completed": ("completed", now - 2 * day, now - 2 * day),
        "old-running": ("running", None, now - 40 * day),
        "old-pending": ("pending", None, now - 40 * day),
    }
    ids = {}
    with system.engine.begin() as conn:
        for tenant, (name, (status, end, updated)) in enumerate(rows.items(), start=30):
            ids[name] = conn.exec_driver_sql(
                "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, create_admin_id,"
                " end_time, create_time, update_time) VALUES (%s, %s, 'account_check', %s, 1, %s, %s, %s)",
                (tenant, name, status, end, updated - 60, updated),
            ).lastrowid
            conn.exec_driver_sql(
                "INSERT INTO la_batch_task_detail (task_id, item_id, status, create_time, update_time)"
                " VALUES (%s, 1, 'success', %s, %s), (%s, 2, 'failed', %s, %s)",
                (ids[name], updated, updated) * 2,
            )
    flow_run_id = _deployment_run(system, "prune/prune")
    assert _wait_flow_run(system, flow_run_id, FIRST_RUN_TIMEOUT).is_completed()
    left = {int(i) for (i,) in system.sql("SELECT id FROM la_batch_task")}
    gone = {"old-completed", "old-failed", "old-cancelled-no-end"}
    assert {ids[n] for n in gone}.isdisjoint(left)
    assert {ids[n] for n in rows if n not in gone} <= left
    details = {int(t) for (t,) in system.sql("SELECT DISTINCT task_id FROM la_batch_task_detail")}
    assert {ids[n] for n in gone}.isdisjoint(details)
    for name in ("old-running", "old-pending"):  # leave nothing active behind for other tests
        system.sql("UPDATE la_batch_task SET task_status = 'failed' WHERE id = :id", id=ids[name])


def test_local_serve_runs_every_deployment(system: Deployed) -> None:
    """``python -m deployments.serve``, the all-in-one mode, on a server of its own (serving
    registers the same deployment names as prefect.yaml, without a work pool)."""
    import subprocess

    from deployments.local_server import free_port

    home = system.tmp / "serve-home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**system.env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
    procs = []

    def spawn(args: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=open(system.tmp / f"{name}.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}  # SQLite in its PREFECT_HOME
    spawn([sys_python(), "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
          "serve-server", server_env)
    try:
        import httpx

        wait_for(lambda: _healthy(httpx, api_url), 90, interval=0.5, what="the second Prefect server")
        spawn([sys_python(), "-m", "deployments.serve"], "serve", env)
        from prefect.client.orchestration import SyncPrefectClient

        names = {f"{s.entrypoint.rsplit(':', 1)[1].replace('_', '-')}/{s.name}" for s in load_specs()}

        def served() -> bool:
            with SyncPrefectClient(api=api_url) as client:
                return names <= {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}

        wait_for(served, 60, interval=1, what="every deployment to be served")
        with SyncPrefectClient(api=api_url) as client:
            maintenance = client.read_deployment_by_name("maintenance/maintenance")
            assert [s.schedule.interval.total_seconds() for s in maintenance.schedules] == [900]
            assert maintenance.parameters == {"run_for_s": 960, "poll_s": 2, "reap_every_s": 15}


        def triggers() -> list[str]:  # serve creates them too, right after each deployment
            with SyncPrefectClient(api=api_url) as client:  # (3.8.8 reads owner_resource back as None)
                return [a.name for a in client.read_automations()
                        if [getattr(x, "deployment_id", None) for x in a.actions] == [maintenance.id]]

        wait_for(lambda: triggers() == ["maintenance-after-a-crash"], 60, interval=1,
                 what="the maintenance deployment's trigger")
        run = subprocess.run(["prefect", "deployment", "run", "account-check/account-check", "-p", "tenant_id=11"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
        with SyncPrefectClient(api=api_url) as client:
            state = wait_for(lambda: (s := client.read_flow_run(flow_run_id).state) and s.is_final() and s,
                             FIRST_RUN_TIMEOUT, what="the served run to end")
        assert state.is_completed(), (state, (system.tmp / "serve.log").read_text()[-3000:])
        batch = system.batches_of(11)[-1]  # the newest: the nightly test may have checked tenant 11 too
        assert batch["task_status"] == "completed", batch
        system.assert_consistent(batch["id"])
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _healthy(httpx, api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
