"""Reaper, pruning and dispatch queries over the mirror tables (caller owns the transaction)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import DETAIL, RUN, TASK, chunks, insert_ignore, now_or, truncate
from db.mirror import _final_values, holds_key, recount
from db.models import BatchTask

__all__ = [
    "fail_stale_batches", "mark_failed_unowned", "prune_finished", "pending_batches", "running_batches",
    "DISPATCHER_OWNER", "Dispatch", "RunningBatch", "fail_pending", "reserve_dispatch", "record_dispatch",
    "next_dispatch_attempt", "running_with_heartbeat", "dispatch_notes", "key_holders",
]

Summarize = Callable[[Session, int], "str | None"]  # (session, batch id) -> text to add to the reason


def _fail_running(
    session: Session,
    batch_id: int,
    reason: str,
    now: int,
    *,
    fence_expected: int | None = None,
    stale_before: int | None = None,
    summarize: Summarize | None = None,
) -> bool:
    """Close one batch whose run is gone and bump its fence, re-checking everything under the row locks.

    A running batch is failed with ``reason``; one the admin panel cancelled or soft-deleted
    (still holding its key because its run never closed it) ends ``cancelled``.
    ``summarize(session, batch_id)`` (the batch type's closing summary) is appended to the reason."""
    run = session.execute(
        select(RUN.c.fence, RUN.c.heartbeat_time).where(RUN.c.task_id == batch_id).with_for_update()
    ).one_or_none()
    if fence_expected is not None and (run is None or run.fence != fence_expected):
        return False
    task = session.execute(
        select(TASK.c.task_status, TASK.c.update_time, TASK.c.delete_time)
        .where(TASK.c.id == batch_id, holds_key())
        .with_for_update()
    ).one_or_none()
    if task is None:
        return False
    if stale_before is not None:
        seen = run.heartbeat_time if run is not None and run.heartbeat_time is not None else task.update_time
        if seen >= stale_before:
            return False
    summary = summarize(session, batch_id) if summarize is not None else None
    if summary:
        reason = f"{reason}; {summary}"
    cancelled = task.task_status == st.CANCELLED or task.delete_time is not None
    counts = recount(session, batch_id)
    session.execute(
        update(TASK)
        .where(TASK.c.id == batch_id, TASK.c.task_status == task.task_status)
        .values(_final_values(counts, st.CANCELLED if cancelled else st.FAILED, reason, now))
    )
    if run is not None:
        session.execute(
            update(RUN).where(RUN.c.task_id == batch_id).values(fence=RUN.c.fence + 1, update_time=now)
        )
    return True


def fail_stale_batches(
    session: Session, *, now: int, stale_after_s: int, reason: str, summarize: Summarize | None = None
) -> list[int]:
    """Fail running batches whose run heartbeat (or task update_time) is older than the window.

    Their fence is bumped, so a stale owner that wakes up writes nothing.
    """
    stale_before = now - stale_after_s
    seen = func.coalesce(RUN.c.heartbeat_time, TASK.c.update_time)
    candidates = session.execute(
        select(TASK.c.id)
        .select_from(TASK.outerjoin(RUN, RUN.c.task_id == TASK.c.id))
        .where(holds_key(), seen < stale_before)
        .order_by(TASK.c.id)
    ).scalars().all()
    return [
        int(batch_id)
        for batch_id in candidates
        if _fail_running(session, batch_id, reason, now, stale_before=stale_before, summarize=summarize)
    ]


def mark_failed_unowned(
    session: Session,
    batch_id: int,
    fence_expected: int | None,
    reason: str,
    now: int | None = None,
    summarize: Summarize | None = None,
) -> bool:
    """Fail a running batch whose flow run is known gone; with ``fence_expected``, only if
    nobody re-claimed it since. Returns whether it was marked."""
    return _fail_running(
        session, batch_id, reason, now_or(now), fence_expected=fence_expected, summarize=summarize
    )


def prune_finished(session: Session, *, before: int, limit: int, hard: bool, now: int | None = None) -> int:
    """Remove up to ``limit`` finished batches that ended before ``before``; returns how many.

    hard: DELETE details, run rows, then the tasks. soft: set delete_time.
    """
    ended = func.coalesce(TASK.c.end_time, TASK.c.update_time)
    query = select(TASK.c.id).where(TASK.c.task_status.in_(st.FINAL), ~holds_key(), ended < before)
    if not hard:
        query = query.where(TASK.c.delete_time.is_(None))
    ids = [int(i) for i in session.execute(query.order_by(TASK.c.id).limit(limit)).scalars()]
    for part in chunks(ids, 100):
        if hard:
            session.execute(delete(DETAIL).where(DETAIL.c.task_id.in_(part)))
            session.execute(delete(RUN).where(RUN.c.task_id.in_(part)))
            session.execute(delete(TASK).where(TASK.c.id.in_(part)))
        else:
            session.execute(update(TASK).where(TASK.c.id.in_(part)).values(delete_time=now_or(now)))
    return len(ids)


def pending_batches(session: Session, limit: int) -> list[BatchTask]:
    """Pending, not deleted batches, oldest first (for the dispatcher)."""
    return list(
        session.scalars(
            select(BatchTask)
            .where(BatchTask.task_status == st.PENDING, BatchTask.delete_time.is_(None))
            .order_by(BatchTask.id)
            .limit(limit)
        )
    )


def running_batches(session: Session, flow_run_id: str | None = None) -> list[tuple[int, int, str | None]]:
    """(batch id, fence, flow run id) of batches a run still holds (running, or cancelled and
    not yet closed), optionally only those one flow run owns."""
    query = (
        select(TASK.c.id, RUN.c.fence, RUN.c.flow_run_id)
        .join(RUN, RUN.c.task_id == TASK.c.id)
        .where(holds_key())
        .order_by(TASK.c.id)
    )
    if flow_run_id is not None:
        query = query.where(RUN.c.flow_run_id == flow_run_id)
    return [(int(r.id), int(r.fence), r.flow_run_id) for r in session.execute(query)]


# -- dispatcher and reaper helpers (added for the deployments) ---------------------------

DISPATCHER_OWNER = "dispatcher"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The dispatcher's note on a pending batch: its la_batch_run row, before a run claims it.

    ``owner`` is ``dispatcher:<attempt>``; ``flow_run_id`` is None between reserving an
    attempt and recording the flow run it created; ``since`` is when that attempt began.
    """

    batch_id: int
    attempt: int
    flow_run_id: str | None
    since: int


@dataclass(frozen=True, slots=True)
class RunningBatch:
    batch_id: int
    fence: int
    flow_run_id: str | None
    seen: int  # last heartbeat (or la_batch_task.update_time when there is none)


def _dispatch_attempt(owner: str | None) -> int | None:
    prefix = DISPATCHER_OWNER + ":"
    if owner is None or not owner.startswith(prefix):
        return None
    try:
        return int(owner[len(prefix):])
    except ValueError:
        return None


def fail_pending(session: Session, batch_id: int, reason: str, now: int | None = None) -> bool:
    """Fail a batch nobody has claimed yet (guarded: only while it is still ``pending``).

    For rows the dispatcher cannot start (unknown type, task_data not a JSON object).
    Returns False when a run claimed it first (or it was deleted).
    """
    now = now_or(now)
    moved = session.execute(
        update(TASK)
        .where(TASK.c.id == batch_id, TASK.c.task_status == st.PENDING, TASK.c.delete_time.is_(None))
        .values(task_status=st.FAILED, end_time=now, update_time=now, error_message=truncate(reason))
    ).rowcount
    return moved == 1


def reserve_dispatch(session: Session, batch_id: int, now: int | None = None) -> Dispatch | None:
    """Note that the dispatcher is starting a run for a pending batch, or read the note.

    Returns None when the batch is no longer pending or a run already claimed it. A new note
    is attempt 1 with no flow run yet; an existing note is returned as it is (the caller
    re-creates the flow run of a note without one, under the same idempotency key).
    Lock order: la_batch_run, then la_batch_task (as in every fenced write).
    """
    now = now_or(now)
    status_of = select(TASK.c.task_status).where(TASK.c.id == batch_id, TASK.c.delete_time.is_(None))
    if session.execute(status_of).scalar_one_or_none() != st.PENDING:
        return None
    lock_run = select(RUN.c.owner, RUN.c.flow_run_id, RUN.c.update_time).where(RUN.c.task_id == batch_id)
    run = session.execute(lock_run.with_for_update()).one_or_none()
    if run is None:
        session.execute(
            insert_ignore(RUN).values(
                task_id=batch_id, fence=0, owner=f"{DISPATCHER_OWNER}:1", create_time=now, update_time=now
            )
        )
        run = session.execute(lock_run.with_for_update()).one()
    status = session.execute(status_of).scalar_one_or_none()  # re-read under the run row lock
    attempt = _dispatch_attempt(run.owner)
    if status != st.PENDING or attempt is None:
        return None
    return Dispatch(batch_id, attempt, run.flow_run_id, int(run.update_time))


def record_dispatch(session: Session, batch_id: int, attempt: int, flow_run_id: str) -> bool:
    """Store the flow run an attempt created (guarded: only if no run claimed the batch since)."""
    return session.execute(
        update(RUN)
        .where(RUN.c.task_id == batch_id, RUN.c.owner == f"{DISPATCHER_OWNER}:{attempt}")
        .values(flow_run_id=flow_run_id)
    ).rowcount == 1


def next_dispatch_attempt(session: Session, seen: Dispatch, now: int | None = None) -> Dispatch | None:
    """Compare-and-set a new attempt for a batch whose dispatched run ended without claiming it.

    Only one caller wins (the note must still be exactly ``seen``, and the batch pending).
    """
    now = now_or(now)
    current = reserve_dispatch(session, seen.batch_id, now)  # locks the run row; None unless pending
    if current != seen:
        return None
    attempt = seen.attempt + 1
    session.execute(
        update(RUN)
        .where(RUN.c.task_id == seen.batch_id)
        .values(owner=f"{DISPATCHER_OWNER}:{attempt}", flow_run_id=None, update_time=now)
    )
    return Dispatch(seen.batch_id, attempt, None, now)


def running_with_heartbeat(session: Session) -> list[RunningBatch]:
    """Batches a run holds (running, or cancelled and not yet closed) with their owner's flow
    run id and when the owner was last seen alive."""
    seen = func.coalesce(RUN.c.heartbeat_time, TASK.c.update_time)
    rows = session.execute(
        select(TASK.c.id, RUN.c.fence, RUN.c.flow_run_id, seen.label("seen"))
        .select_from(TASK.outerjoin(RUN, RUN.c.task_id == TASK.c.id))
        .where(holds_key())
        .order_by(TASK.c.id)
    )
    return [
        RunningBatch(int(r.id), int(r.fence or 0), r.flow_run_id, int(r.seen)) for r in rows
    ]


def dispatch_notes(session: Session, batch_ids: list[int]) -> dict[int, Dispatch]:
    """The dispatcher's notes on these batches (read-only), by batch id; others are absent."""
    notes: dict[int, Dispatch] = {}
    for part in chunks(batch_ids):
        rows = session.execute(
            select(RUN.c.task_id, RUN.c.owner, RUN.c.flow_run_id, RUN.c.update_time).where(RUN.c.task_id.in_(part))
        )
        for r in rows:
            attempt = _dispatch_attempt(r.owner)
            if attempt is not None:
                notes[int(r.task_id)] = Dispatch(int(r.task_id), attempt, r.flow_run_id, int(r.update_time))
    return notes


def key_holders(session: Session) -> dict[tuple[int, str], int]:
    """(tenant, type) -> the batch holding it (running, or cancelled and still stopping).

    The dispatcher keeps the pending rows of these keys queued until the holder has ended."""
    rows = session.execute(select(TASK.c.id, TASK.c.tenant_id, TASK.c.task_type).where(holds_key()))
    return {(int(r.tenant_id), str(r.task_type)): int(r.id) for r in rows}
