"""Prefect tasks of the maintenance flows: dispatch admin rows, reap dead runs, prune history.

Each task is one side effect (a short transaction, or a flow run created through the API).
The reads that decide whether anything needs doing are plain functions, so a quiet poll
creates no task run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from batchlib.notify import batch_ended
from batchlib.task_data import task_data_problem
from db import fail_stale_batches, get_engine, mark_failed_unowned, pending_batches, prune_finished, run_transaction
from db import statuses as st
from db.maintenance import (
    dispatch_notes,
    fail_pending,
    next_dispatch_attempt,
    reaped_recently,
    record_dispatch,
    record_resume,
    reserve_auto_resumes,
    reserve_dispatch,
    resume_lost,
    resumes_to_start,
    running_with_heartbeat,
)
from db.maintenance import key_holders as holders
from tasks.batch_steps import closing_summary

__all__ = [
    "PendingRow", "pending_rows", "key_holders", "row_problem", "dispatch_notes_for", "flow_run_ending",
    "fail_row", "start_batch_run", "restart_batch_run",
    "running_batches_seen", "reap_gone_run", "reap_stale_batches", "prune_chunk", "start_tenant_run",
    "awaiting_resume", "reserve_resumes", "resumes_reserved", "start_resume_run", "resume_run_lost",
    "AUTO_RESUME_WINDOW_S", "LiveRun", "live_maintenance_runs",
]

FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


def _engine():
    return get_engine()


def _tx(fn):
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
    return _tx(lambda s: [
        PendingRow(r.id, r.tenant_id, r.task_type, r.task_data, r.create_time) for r in pending_batches(s, limit)
    ])


def key_holders() -> dict[tuple[int, str], int]:
    """(tenant, type) -> the batch holding it (running, or stopping after a cancel)."""
    return _tx(holders)


def row_problem(row: PendingRow, known_types: dict[str, str]) -> str | None:
    """Why a pending row cannot be started, in one line for the admin panel; None when it can.

    Only the row itself is read (``batchlib.task_data``: size, nesting, JSON, the type's keys
    and their types); the run checks the items against the database.
    """
    if row.task_type not in known_types:
        known = ", ".join(sorted(known_types)) or "none"
        return f"unknown task_type {str(row.task_type)[:60]!r}: this installation runs {known}"
    return task_data_problem(row.task_type, row.task_data)


def dispatch_notes_for(batch_ids: list[int]) -> dict[int, Any]:
    return _tx(lambda s: dispatch_notes(s, batch_ids)) if batch_ids else {}


def flow_run_ending(flow_run_id: str) -> str | None:
    """How a flow run ended ("ended Crashed (message)", "does not exist ..."), or None while it is not over.

    Also None when the API cannot be asked: nothing is decided on a guess.
    """
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
    """Create the deployment run for one dispatch attempt (idempotent on the Prefect server)."""
    return _start_batch(deployment, row.batch_id, row.tenant_id,
                        f"batch-{row.batch_id}-{row.create_time}-{attempt}", ["dispatched"])


def _start_batch(deployment: str, batch_id: int, tenant_id: int, idempotency_key: str, tags: list[str]) -> str:
    """A deployment run that claims (or resumes) one batch row; the server de-duplicates the key.

    The deployment's own tags (``batch``, the type) are added by the server."""
    flow_run = run_deployment(
        deployment,
        parameters={"batch_id": batch_id, "tenant_id": tenant_id},
        flow_run_name=f"{_flow_of(deployment)}-batch-{batch_id}",
        timeout=0,
        as_subflow=False,  # cancelling a maintenance run must not cancel the batches it started
        idempotency_key=idempotency_key,
        tags=[*tags, f"tenant-{tenant_id}", f"batch-{batch_id}"],
    )
    return str(flow_run.id)


@task(name="fail-batch-row", task_run_name="fail-batch-row-{batch_id}", cache_policy=NO_CACHE, persist_result=False)
def fail_row(batch_id: int, reason: str) -> bool:
    """Mark a pending row the dispatcher cannot start as failed (only while still pending)."""
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
    return _tx(running_with_heartbeat)


def _failed_summary(session, batch_id: int) -> str | None:
    """The batch type's closing summary of a batch the reaper fails (e.g. pin_sync's failed pins)."""
    return closing_summary(session, batch_id, st.FAILED, int(time.time()))


@task(name="reap-gone-run", task_run_name="reap-batch-{batch_id}", cache_policy=NO_CACHE, persist_result=False)
def reap_gone_run(batch_id: int, fence: int, reason: str) -> bool:
    """Close a batch whose flow run is over, unless someone re-claimed it (fenced): failed, or
    cancelled when the admin panel cancelled or deleted it."""
    marked = _tx(lambda s: mark_failed_unowned(s, batch_id, fence, reason, summarize=_failed_summary))
    if marked:
        get_run_logger().warning("batch %s closed (its run is gone): %s", batch_id, reason)
        batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return marked


@task(name="reap-stale-batches", cache_policy=NO_CACHE, persist_result=False)
def reap_stale_batches(stale_after_s: int, reason: str) -> list[int]:
    """Fail running batches with no heartbeat for ``stale_after_s`` (re-checked under row locks)."""
    now = int(time.time())
    reaped = _tx(lambda s: fail_stale_batches(
        s, now=now, stale_after_s=stale_after_s, reason=reason, summarize=_failed_summary
    ))
    for batch_id in reaped:
        get_run_logger().warning("batch %s marked failed: %s", batch_id, reason)
        batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return reaped


# -- maintenance runs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveRun:
    id: str
    created: str  # ISO time: orders stand-ins
    stand_in: bool


def live_maintenance_runs() -> list[LiveRun]:
    """Running flow runs of the maintenance flow (an empty list when the API cannot be asked)."""
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["maintenance"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.RUNNING]))),
            )
    except Exception as exc:
        get_run_logger().warning("cannot list maintenance runs: %s", type(exc).__name__)
        return []
    return [LiveRun(str(r.id), r.created.isoformat() if r.created else "", bool(r.parameters.get("stand_in")))
            for r in runs]


# -- automatic resume ------------------------------------------------------------------

AUTO_RESUME_WINDOW_S = 600  # only batches reaped this recently are resumed (not old ones when it is switched on)


def awaiting_resume(window_s: int = AUTO_RESUME_WINDOW_S) -> bool:
    """Whether the reaper failed a batch recently that no resume was reserved for yet."""
    return _tx(lambda s: reaped_recently(s, window_s=window_s))


@task(name="reserve-auto-resumes", cache_policy=NO_CACHE, persist_result=False)
def reserve_resumes(max_attempts: int, window_s: int = AUTO_RESUME_WINDOW_S) -> list[Any]:
    """Reserve the next automatic resume of each recently reaped batch (one winner per attempt)."""
    reserved, gave_up = _tx(lambda s: reserve_auto_resumes(s, max_attempts=max_attempts, window_s=window_s))
    for batch_id in gave_up:
        get_run_logger().warning(
            "batch %s stays failed: its %s automatic resumes are used up (resume it by hand)", batch_id, max_attempts
        )
    return reserved


def resumes_reserved() -> list[Any]:
    return _tx(resumes_to_start)


@task(name="start-resume-run", task_run_name="auto-resume-batch-{resume.batch_id}-{resume.attempt}",
      cache_policy=NO_CACHE, persist_result=False)
def start_resume_run(resume: Any, deployment: str, max_attempts: int) -> str | None:
    """Create the resume run of a reserved attempt and record it (overlapping callers: one run)."""
    key = f"auto-resume-{resume.batch_id}-{resume.create_time}-{resume.attempt}"
    tags = ["auto-resume", f"auto-resume-{resume.attempt}"]
    flow_run_id = _start_batch(deployment, resume.batch_id, resume.tenant_id, key, tags)
    if not _tx(lambda s: record_resume(s, resume.batch_id, resume.attempt, flow_run_id)):
        return None  # claimed (or handed back) meanwhile
    get_run_logger().warning(
        "batch %s (%s, tenant %s): auto-resume %s/%s, flow run %s of %s",
        resume.batch_id, resume.task_type, resume.tenant_id, resume.attempt, max_attempts, flow_run_id, deployment,
    )
    return flow_run_id


@task(name="resume-run-lost", task_run_name="resume-run-lost-{resume.batch_id}", cache_policy=NO_CACHE,
      persist_result=False)
def resume_run_lost(resume: Any, ending: str) -> bool:
    """The resume run ended without claiming its batch: the next attempt may start."""
    reason = f"auto-resume run {resume.flow_run_id} {ending} before claiming the batch"
    lost = _tx(lambda s: resume_lost(s, resume, reason))
    if lost:
        get_run_logger().warning("batch %s: %s", resume.batch_id, reason)
    return lost


# -- prune -----------------------------------------------------------------------------


@task(name="prune-chunk", cache_policy=NO_CACHE, persist_result=False)
def prune_chunk(before: int, limit: int, hard: bool) -> int:
    """One bounded transaction: remove up to ``limit`` finished batches that ended before ``before``."""
    return _tx(lambda s: prune_finished(s, before=before, limit=limit, hard=hard))


# -- nightly ---------------------------------------------------------------------------


@task(name="start-tenant-run", task_run_name="start-{deployment}-tenant-{tenant_id}", cache_policy=NO_CACHE,
      persist_result=False)
def start_tenant_run(deployment: str, tenant_id: int, parameters: dict[str, Any], idempotency_key: str) -> str:
    flow_run = run_deployment(
        deployment,
        parameters={"tenant_id": tenant_id, **parameters},
        flow_run_name=f"{_flow_of(deployment)}-tenant-{tenant_id}",
        timeout=0,
        as_subflow=False,
        idempotency_key=idempotency_key,
        tags=["nightly", f"tenant-{tenant_id}"],
    )
    return str(flow_run.id)


def _flow_of(deployment: str) -> str:
    """``account-check`` of ``account-check/account-check``: a run's name starts with its flow's."""
    return deployment.split("/", 1)[0]
