"""Prefect tasks of the maintenance flows: dispatch admin rows, reap dead runs, prune history.

Each task is one side effect (a short transaction, or a flow run created through the API).
The reads that decide whether anything needs doing are plain functions, so a quiet poll
creates no task run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from batchlib.notify import batch_ended
from batchlib.settings import get_settings

__all__ = [
    "PendingRow", "pending_rows", "row_problem", "dispatch_notes_for", "flow_run_ending",
    "fail_row", "start_batch_run", "restart_batch_run",
    "running_batches_seen", "reap_gone_run", "reap_stale_batches", "prune_chunk", "start_tenant_run",
]

FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def _engine():
    from db import get_engine

    return get_engine(get_settings().database_url.get_secret_value())


def _tx(fn):
    from db import run_transaction

    return run_transaction(_engine(), fn)


# -- dispatcher ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingRow:
    batch_id: int
    tenant_id: int
    task_type: str
    task_data: str | None
    create_time: int


def pending_rows(limit: int) -> list[PendingRow]:
    from db import pending_batches

    return _tx(lambda s: [
        PendingRow(r.id, r.tenant_id, r.task_type, r.task_data, r.create_time) for r in pending_batches(s, limit)
    ])


def row_problem(row: PendingRow, known_types: dict[str, str]) -> str | None:
    """Why a pending row cannot be started, in words for the admin panel; None when it can."""
    import json

    if row.task_type not in known_types:
        known = ", ".join(sorted(known_types)) or "none"
        return f"unknown task_type {row.task_type!r}: this installation runs {known}"
    if row.task_data is None or row.task_data.strip() == "":
        return None  # no input: the batch type's defaults (e.g. every active account)
    try:
        data = json.loads(row.task_data)
    except ValueError as exc:
        return f"invalid task_data: not valid JSON ({exc.msg} at character {exc.pos})"
    if data is not None and not isinstance(data, dict):  # JSON null: no input, as above
        return f"invalid task_data: expected a JSON object, got {type(data).__name__}"
    return None


def dispatch_notes_for(batch_ids: list[int]) -> dict[int, Any]:
    from db.maintenance import dispatch_notes

    return _tx(lambda s: dispatch_notes(s, batch_ids)) if batch_ids else {}


def flow_run_ending(flow_run_id: str) -> str | None:
    """How a flow run ended ("ended Crashed (message)", "does not exist ..."), or None while it is not over.

    Also None when the API cannot be asked: nothing is decided on a guess.
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        return "is not a flow run id"
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
    except ObjectNotFound:
        return "does not exist on the Prefect server"
    except Exception as exc:  # the API being down is not evidence that the run is gone
        get_run_logger().warning("cannot read flow run %s: %s", flow_run_id, type(exc).__name__)
        return None
    state = run.state
    if state is None or state.type.value not in FINAL_STATE_TYPES:
        return None
    return f"ended {state.name}" + (f" ({state.message})" if state.message else "")


def _start(deployment: str, row: PendingRow, attempt: int) -> str:
    """Create the deployment run for one attempt (idempotent on the Prefect server)."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        deployment,
        parameters={"batch_id": row.batch_id, "tenant_id": row.tenant_id},
        timeout=0,
        as_subflow=False,  # cancelling a dispatcher run must not cancel the batches it started
        idempotency_key=f"batch-{row.batch_id}-{row.create_time}-{attempt}",
        tags=["dispatched", f"tenant-{row.tenant_id}", f"batch-{row.batch_id}"],
    )
    return str(flow_run.id)


@task(name="fail-batch-row", task_run_name="fail-batch-row-{batch_id}", cache_policy=NO_CACHE, persist_result=False)
def fail_row(batch_id: int, reason: str) -> bool:
    """Mark a pending row the dispatcher cannot start as failed (only while still pending)."""
    from db.maintenance import fail_pending

    failed = _tx(lambda s: fail_pending(s, batch_id, reason))
    get_run_logger().warning("batch %s %s: %s", batch_id, "failed" if failed else "was claimed first", reason)
    return failed


@task(name="start-batch-run", task_run_name="start-batch-run-{row.batch_id}", cache_policy=NO_CACHE,
      persist_result=False)
def start_batch_run(row: PendingRow, deployment: str) -> str | None:
    """Note the dispatch in la_batch_run, create the deployment run, record its id.

    Two dispatchers racing here read the same note (attempt N) and send the same
    idempotency key: the Prefect server creates one flow run for both.
    """
    from db.maintenance import record_dispatch, reserve_dispatch

    note = _tx(lambda s: reserve_dispatch(s, row.batch_id))
    if note is None:
        return None  # claimed by its run meanwhile
    flow_run_id = note.flow_run_id or _start(deployment, row, note.attempt)
    _tx(lambda s: record_dispatch(s, row.batch_id, note.attempt, flow_run_id))
    get_run_logger().info(
        "batch %s (%s, tenant %s): flow run %s of %s (attempt %s)",
        row.batch_id, row.task_type, row.tenant_id, flow_run_id, deployment, note.attempt,
    )
    return flow_run_id


@task(name="restart-batch-run", task_run_name="restart-batch-run-{row.batch_id}", cache_policy=NO_CACHE,
      persist_result=False)
def restart_batch_run(row: PendingRow, deployment: str, seen: Any, ending: str) -> str | None:
    """A dispatched run ended without claiming its row: start another (one winner per attempt)."""
    from db.maintenance import next_dispatch_attempt, record_dispatch

    note = _tx(lambda s: next_dispatch_attempt(s, seen))
    if note is None:
        return None
    flow_run_id = _start(deployment, row, note.attempt)
    _tx(lambda s: record_dispatch(s, row.batch_id, note.attempt, flow_run_id))
    get_run_logger().warning(
        "batch %s: flow run %s ended (%s) without claiming it; started %s (attempt %s)",
        row.batch_id, seen.flow_run_id, ending, flow_run_id, note.attempt,
    )
    return flow_run_id


# -- reaper ----------------------------------------------------------------------------


def running_batches_seen() -> list[Any]:
    from db.maintenance import running_with_heartbeat

    return _tx(running_with_heartbeat)


def _failed_summary(session, batch_id: int) -> str | None:
    """The batch type's closing summary of a batch the reaper fails (e.g. pin_sync's failed pins)."""
    from tasks.batch_steps import closing_summary

    return closing_summary(session, batch_id, "failed", int(time.time()))


@task(name="reap-gone-run", task_run_name="reap-batch-{batch_id}", cache_policy=NO_CACHE, persist_result=False)
def reap_gone_run(batch_id: int, fence: int, reason: str) -> bool:
    """Fail a running batch whose flow run is over, unless someone re-claimed it (fenced)."""
    from db import mark_failed_unowned

    marked = _tx(lambda s: mark_failed_unowned(s, batch_id, fence, reason, summarize=_failed_summary))
    if marked:
        get_run_logger().warning("batch %s marked failed: %s", batch_id, reason)
        batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return marked


@task(name="reap-stale-batches", cache_policy=NO_CACHE, persist_result=False)
def reap_stale_batches(stale_after_s: int, reason: str) -> list[int]:
    """Fail running batches with no heartbeat for ``stale_after_s`` (re-checked under row locks)."""
    from db import fail_stale_batches

    now = int(time.time())
    reaped = _tx(lambda s: fail_stale_batches(
        s, now=now, stale_after_s=stale_after_s, reason=reason, summarize=_failed_summary
    ))
    for batch_id in reaped:
        get_run_logger().warning("batch %s marked failed: %s", batch_id, reason)
        batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return reaped


# -- prune -----------------------------------------------------------------------------


@task(name="prune-chunk", cache_policy=NO_CACHE, persist_result=False)
def prune_chunk(before: int, limit: int, hard: bool) -> int:
    """One bounded transaction: remove up to ``limit`` finished batches that ended before ``before``."""
    from db import prune_finished

    return _tx(lambda s: prune_finished(s, before=before, limit=limit, hard=hard))


# -- nightly ---------------------------------------------------------------------------


@task(name="start-tenant-run", task_run_name="start-{deployment}-tenant-{tenant_id}", cache_policy=NO_CACHE,
      persist_result=False)
def start_tenant_run(deployment: str, tenant_id: int, parameters: dict[str, Any], idempotency_key: str) -> str:
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        deployment,
        parameters={"tenant_id": tenant_id, **parameters},
        timeout=0,
        as_subflow=False,
        idempotency_key=idempotency_key,
        tags=["nightly", f"tenant-{tenant_id}"],
    )
    return str(flow_run.id)
