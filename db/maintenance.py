"""Reaper, pruning and dispatch queries over the mirror tables (caller owns the transaction)."""

from __future__ import annotations

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import DETAIL, RUN, TASK, chunks, now_or
from db.mirror import _final_values, recount
from db.models import BatchTask

__all__ = [
    "fail_stale_batches", "mark_failed_unowned", "prune_finished", "pending_batches", "running_batches",
]


def _fail_running(
    session: Session,
    batch_id: int,
    reason: str,
    now: int,
    *,
    fence_expected: int | None = None,
    stale_before: int | None = None,
) -> bool:
    """Fail one running batch and bump its fence, re-checking everything under the row locks."""
    run = session.execute(
        select(RUN.c.fence, RUN.c.heartbeat_time).where(RUN.c.task_id == batch_id).with_for_update()
    ).one_or_none()
    if fence_expected is not None and (run is None or run.fence != fence_expected):
        return False
    task = session.execute(
        select(TASK.c.task_status, TASK.c.update_time).where(TASK.c.id == batch_id).with_for_update()
    ).one_or_none()
    if task is None or task.task_status != st.RUNNING:
        return False
    if stale_before is not None:
        seen = run.heartbeat_time if run is not None and run.heartbeat_time is not None else task.update_time
        if seen >= stale_before:
            return False
    counts = recount(session, batch_id)
    session.execute(
        update(TASK)
        .where(TASK.c.id == batch_id, TASK.c.task_status == st.RUNNING)
        .values(_final_values(counts, st.FAILED, reason, now))
    )
    if run is not None:
        session.execute(
            update(RUN).where(RUN.c.task_id == batch_id).values(fence=RUN.c.fence + 1, update_time=now)
        )
    return True


def fail_stale_batches(session: Session, *, now: int, stale_after_s: int, reason: str) -> list[int]:
    """Fail running batches whose run heartbeat (or task update_time) is older than the window.

    Their fence is bumped, so a stale owner that wakes up writes nothing.
    """
    stale_before = now - stale_after_s
    seen = func.coalesce(RUN.c.heartbeat_time, TASK.c.update_time)
    candidates = session.execute(
        select(TASK.c.id)
        .select_from(TASK.outerjoin(RUN, RUN.c.task_id == TASK.c.id))
        .where(TASK.c.task_status == st.RUNNING, seen < stale_before)
        .order_by(TASK.c.id)
    ).scalars().all()
    return [
        int(batch_id)
        for batch_id in candidates
        if _fail_running(session, batch_id, reason, now, stale_before=stale_before)
    ]


def mark_failed_unowned(
    session: Session, batch_id: int, fence_expected: int | None, reason: str, now: int | None = None
) -> bool:
    """Fail a running batch whose flow run is known gone; with ``fence_expected``, only if
    nobody re-claimed it since. Returns whether it was marked."""
    return _fail_running(session, batch_id, reason, now_or(now), fence_expected=fence_expected)


def prune_finished(session: Session, *, before: int, limit: int, hard: bool, now: int | None = None) -> int:
    """Remove up to ``limit`` finished batches that ended before ``before``; returns how many.

    hard: DELETE details, run rows, then the tasks. soft: set delete_time.
    """
    ended = func.coalesce(TASK.c.end_time, TASK.c.update_time)
    query = select(TASK.c.id).where(TASK.c.task_status.in_(st.FINAL), ended < before)
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
    """(batch id, fence, flow run id) of running batches, optionally only those one flow run owns."""
    query = (
        select(TASK.c.id, RUN.c.fence, RUN.c.flow_run_id)
        .join(RUN, RUN.c.task_id == TASK.c.id)
        .where(TASK.c.task_status == st.RUNNING)
        .order_by(TASK.c.id)
    )
    if flow_run_id is not None:
        query = query.where(RUN.c.flow_run_id == flow_run_id)
    return [(int(r.id), int(r.fence), r.flow_run_id) for r in session.execute(query)]
