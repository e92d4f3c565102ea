"""The warm engine (deployments/warm_engine.py) on the cancel and kill paths, end to end.

A real ``prefect server start``, a real ``prefect worker`` whose account-check runs start through
the warm engine's client, MariaDB, Redis and the simulator (bench/many_tenants.py's
``deployed_system``). Cancelling a run from the API must stop its forked child and the batch; a
SIGKILL of the client (the worker's flow-run process) must take the forked child with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.states import Cancelling

from bench.many_tenants import (
    System,
    _flow_run_id,
    _wait_worker_ready,
    _warm_children,
    _worker,
    deployed_system,
)
from db import counters, recount, run_transaction
from tests.support.deployed import descendants, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CANCELLED, KILLED = 1, 2  # tenants: one batch each
ITEMS = 200  # 200 items × 250 ms / 2 at once: ~25 s per batch, so both are surely running when hit
FIRST_RUN_TIMEOUT = 120  # worker poll + the warm process's start (the first run on this host starts it)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def warm() -> Iterator[tuple[System, subprocess.Popen]]:
    saved = dict(os.environ)  # deployed_system exports its server's PREFECT_* variables
    try:
        with deployed_system({CANCELLED: ITEMS, KILLED: ITEMS}, latency_ms=250, concurrency=2,
                             warm_engine=True) as system:
            log = system.tmp / "worker.log"
            worker = _worker(system.env, 2, log)
            try:
                _wait_worker_ready(log, worker)
                yield system, worker
            finally:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    try:
                        worker.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)
                        worker.wait()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _client(system: System) -> SyncPrefectClient:
    return SyncPrefectClient(api=system.server.api_url, auth_string=system.server.auth_string)


def _start(system: System, tenant: int) -> str:
    with _client(system) as client:
        deployment = client.read_deployment_by_name("account-check/account-check")
        return str(client.create_flow_run_from_deployment(deployment.id, parameters={"tenant_id": tenant}).id)


def _batch(system: System, tenant: int) -> dict | None:
    with system.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT id, task_status, total_count, processed_count, success_count, failed_count"
            " FROM la_batch_task WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", (tenant,)).first()
    return dict(row._mapping) if row else None


def _running(system: System, tenant: int) -> dict:
    return wait_for(
        lambda: (b := _batch(system, tenant)) and b["task_status"] == "running" and b["processed_count"] >= 4 and b,
        FIRST_RUN_TIMEOUT, interval=0.2, what=f"tenant {tenant}'s batch running",
    )


def _processes(worker: subprocess.Popen, flow_run_id: str) -> tuple[int, int]:
    """(client, forked child) of a flow run: the worker's flow-run process is the warm engine's
    client (never a cold ``python -m prefect.engine``), its run the child the warm process forked."""
    (client,) = wait_for(lambda: [p for p in descendants(worker.pid) if _flow_run_id(p) == flow_run_id],
                         30, what=f"flow run {flow_run_id}'s process under the worker")
    (child,) = wait_for(lambda: [c for c, owner in _warm_children().items() if owner == client and _alive(c)],
                        30, what=f"the warm engine's child for client {client}")
    assert [p for p in descendants(worker.pid) if p != client and _flow_run_id(p) == flow_run_id] == []
    return client, child


def _calls(system: System, tenant: int) -> int:
    return sum(1 for c in system.sim.calls(endpoint="GET /v1/me") if c["tenant_id"] == tenant)


def test_warm_engine_cancel_from_the_api_and_killed_client(warm: tuple[System, subprocess.Popen]) -> None:
    system, worker = warm

    # 1. Cancel from the API: the worker kills the client, the client relays it to the child
    flow_run_id = _start(system, CANCELLED)
    batch = _running(system, CANCELLED)
    client, child = _processes(worker, flow_run_id)
    with _client(system) as api:
        api.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by the operator"))
    done = wait_for(lambda: (b := _batch(system, CANCELLED))["task_status"] != "running" and b, 45,
                    what="the cancelled batch to end")
    assert done["task_status"] == "cancelled", done
    assert done["processed_count"] < done["total_count"] == ITEMS  # it really stopped early
    assert done["processed_count"] == done["success_count"] + done["failed_count"], done
    stored = run_transaction(system.engine, lambda s: counters(s, batch["id"]))
    actual = run_transaction(system.engine, lambda s: recount(s, batch["id"]))
    fields = ("total", "processed", "success", "failed")  # counters = a recount of the details
    assert [getattr(stored, f) for f in fields] == [getattr(actual, f) for f in fields]
    with _client(system) as api:
        state = wait_for(lambda: (s := api.read_flow_run(flow_run_id).state) and s.is_final() and s, 30,
                         what="the cancelled flow run to end")
    assert state.is_cancelled(), state
    wait_for(lambda: not _alive(child) and not _alive(client), 30, what="the forked child and its client to exit")
    calls = _calls(system, CANCELLED)
    time.sleep(3)
    assert _calls(system, CANCELLED) == calls  # no platform call after it ended

    # 2. The client SIGKILLed (a worker's process tree killed): its forked child dies with it
    flow_run_id = _start(system, KILLED)
    _running(system, KILLED)
    client, child = _processes(worker, flow_run_id)
    os.kill(client, signal.SIGKILL)
    wait_for(lambda: not _alive(child), 10, interval=0.1, what="the forked child to exit after its client's SIGKILL")
    time.sleep(0.5)  # calls already in the simulator when the child died end within its latency
    calls = _calls(system, KILLED)
    time.sleep(3)
    assert _calls(system, KILLED) == calls  # no orphan keeps calling the platform
    # the worker reports the run Crashed (its process exited -9) and its on_crashed hook fails the batch
    wait_for(lambda: _batch(system, KILLED)["task_status"] == "failed", 30, what="the killed run's batch to fail")
