"""Reaper, pruning and dispatch queries over the mirror tables (caller owns the transaction)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from batchcore.outcomes import truncate_error
from db import statuses as st
from db._util import DETAIL, RUN, TASK, chunks, insert_ignore, now_or
from db.mirror import AUTO_RESUME_NOTE, _final_values, holds_key, recount
from db.models import BatchTask

__all__ = [
    "fail_stale_batches", "mark_failed_unowned", "prune_finished", "pending_batches", "running_batches",
    "DISPATCHER_OWNER", "Dispatch", "RunningBatch", "fail_pending", "reserve_dispatch", "record_dispatch",
    "next_dispatch_attempt", "running_with_heartbeat", "dispatch_notes", "key_holders",
    "REAPER_OWNER", "Resume", "reaped_recently", "reserve_auto_resumes", "resumes_to_start", "record_resume", "resume_lost",
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
    if run is not None:  # the owner "reaper" marks it for an automatic resume (reserve_auto_resumes)
        session.execute(
            update(RUN)
            .where(RUN.c.task_id == batch_id)
            .values(fence=RUN.c.fence + 1, owner=REAPER_OWNER, update_time=now)
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


def _dispatch_attempt(owner: str | None, prefix: str = DISPATCHER_OWNER) -> int | None:
    """n of an owner ``<prefix>:<n>`` (a dispatch or an automatic resume attempt), else None."""
    head = prefix + ":"
    if owner is None or not owner.startswith(head) or not owner[len(head):].isdigit():
        return None
    return int(owner[len(head):])


def fail_pending(session: Session, batch_id: int, reason: str, now: int | None = None) -> bool:
    """Fail a batch nobody has claimed yet (guarded: only while it is still ``pending``).

    For rows the dispatcher cannot start (unknown type, task_data not a JSON object).
    Returns False when a run claimed it first (or it was deleted).
    """
    now = now_or(now)
    moved = session.execute(
        update(TASK)
        .where(TASK.c.id == batch_id, TASK.c.task_status == st.PENDING, TASK.c.delete_time.is_(None))
        .values(task_status=st.FAILED, end_time=now, update_time=now, error_message=truncate_error(reason))
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
    return _record_flow_run(session, batch_id, f"{DISPATCHER_OWNER}:{attempt}", flow_run_id)


def _record_flow_run(session: Session, batch_id: int, owner: str, flow_run_id: str) -> bool:
    """Note the flow run that an attempt (``owner``) created, only while that attempt is current."""
    return session.execute(
        update(RUN).where(RUN.c.task_id == batch_id, RUN.c.owner == owner).values(flow_run_id=flow_run_id)
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


# -- automatic resume of reaped batches ----------------------------------------------------
#
# la_batch_run.owner walks: "reaper" (failed because its run died) -> "auto-resume:<n>"
# (attempt n reserved; flow_run_id is set once its run exists) -> the resumed run's own
# owner when it claims the batch. A resume run that ends without claiming sends the row back
# to "reaper" for attempt n + 1. Every step is a compare-and-set under the run row lock, so
# overlapping maintenance runs reserve each attempt once.

REAPER_OWNER = "reaper"
AUTO_RESUME_OWNER = "auto-resume"
GAVE_UP_OWNER = "reaper:gave-up"
_RESUME_HINT = re.compile(r"; resume[^;]*")


@dataclass(frozen=True, slots=True)
class Resume:
    """An automatic resume reserved for a failed batch (``owner`` ``auto-resume:<attempt>``)."""

    batch_id: int
    tenant_id: int
    task_type: str
    create_time: int
    attempt: int
    flow_run_id: str | None
    since: int  # when the attempt was reserved


def reaped_recently(session: Session, *, window_s: int, now: int | None = None) -> bool:
    """Whether a batch failed by the reaper in the last ``window_s`` awaits its automatic resume."""
    since = now_or(now) - window_s
    query = select(RUN.c.task_id).where(RUN.c.owner == REAPER_OWNER, RUN.c.update_time >= since).limit(1)
    return session.execute(query).first() is not None


def reserve_auto_resumes(
    session: Session, *, max_attempts: int, window_s: int, now: int | None = None
) -> tuple[list[Resume], list[int]]:
    """Reserve the next automatic resume of each batch the reaper failed in the last ``window_s``.

    Returns (reserved resumes, batches that used up ``max_attempts``). The batch's
    ``error_message`` becomes ``auto-resume <n>/<max> after: <reason>``; one out of attempts
    keeps the reaper's reason (with its resume hint) and says so. ``max_attempts`` 0 reserves nothing.
    """
    now = now_or(now)
    candidates = session.execute(
        select(RUN.c.task_id)
        .join(TASK, TASK.c.id == RUN.c.task_id)
        .where(RUN.c.owner == REAPER_OWNER, RUN.c.update_time >= now - window_s,
               TASK.c.task_status == st.FAILED, TASK.c.delete_time.is_(None))
        .order_by(RUN.c.task_id)
    ).scalars().all()
    reserved, gave_up = [], []
    for batch_id in candidates:
        run = session.execute(
            select(RUN.c.owner, RUN.c.auto_resumes).where(RUN.c.task_id == batch_id).with_for_update()
        ).one_or_none()
        task = session.execute(
            select(TASK.c.task_status, TASK.c.tenant_id, TASK.c.task_type, TASK.c.create_time, TASK.c.error_message)
            .where(TASK.c.id == batch_id, TASK.c.delete_time.is_(None))
            .with_for_update()
        ).one_or_none()
        if run is None or run.owner != REAPER_OWNER or task is None or task.task_status != st.FAILED:
            continue  # resumed or claimed meanwhile
        if max_attempts <= 0:
            continue
        attempt = int(run.auto_resumes) + 1
        if attempt > max_attempts:
            session.execute(update(RUN).where(RUN.c.task_id == batch_id).values(owner=GAVE_UP_OWNER))
            note = f"no automatic resume left ({max_attempts}/{max_attempts} used); {task.error_message}"
            session.execute(update(TASK).where(TASK.c.id == batch_id).values(error_message=truncate_error(note)))
            gave_up.append(int(batch_id))
            continue
        reason = _RESUME_HINT.sub("", task.error_message or "its run died")  # the hint is for people
        session.execute(
            update(RUN)
            .where(RUN.c.task_id == batch_id)
            .values(owner=f"{AUTO_RESUME_OWNER}:{attempt}", auto_resumes=attempt, flow_run_id=None, update_time=now)
        )
        session.execute(
            update(TASK).where(TASK.c.id == batch_id).values(
                error_message=truncate_error(f"{AUTO_RESUME_NOTE} {attempt}/{max_attempts} after: {reason}"), update_time=now
            )
        )
        reserved.append(Resume(int(batch_id), int(task.tenant_id), str(task.task_type), int(task.create_time),
                               attempt, None, now))
    return reserved, gave_up


def resumes_to_start(session: Session) -> list[Resume]:
    """Reserved automatic resumes whose batch is still failed (not yet claimed by the resume run)."""
    rows = session.execute(
        select(RUN.c.task_id, RUN.c.owner, RUN.c.flow_run_id, RUN.c.update_time,
               TASK.c.tenant_id, TASK.c.task_type, TASK.c.create_time)
        .join(TASK, TASK.c.id == RUN.c.task_id)
        .where(RUN.c.owner.like(f"{AUTO_RESUME_OWNER}:%"), TASK.c.task_status == st.FAILED,
               TASK.c.delete_time.is_(None))
        .order_by(RUN.c.task_id)
    )
    out = []
    for r in rows:
        attempt = _dispatch_attempt(r.owner, AUTO_RESUME_OWNER)
        if attempt is not None:
            out.append(Resume(int(r.task_id), int(r.tenant_id), str(r.task_type), int(r.create_time), attempt,
                              r.flow_run_id, int(r.update_time)))
    return out


def record_resume(session: Session, batch_id: int, attempt: int, flow_run_id: str) -> bool:
    """Store the flow run of a resume attempt (guarded: only while the attempt is still current)."""
    return _record_flow_run(session, batch_id, f"{AUTO_RESUME_OWNER}:{attempt}", flow_run_id)


def resume_lost(session: Session, seen: Resume, reason: str, now: int | None = None) -> bool:
    """A resume run ended without claiming its batch: hand the batch back for the next attempt."""
    now = now_or(now)
    moved = session.execute(
        update(RUN)
        .where(RUN.c.task_id == seen.batch_id, RUN.c.owner == f"{AUTO_RESUME_OWNER}:{seen.attempt}",
               RUN.c.flow_run_id == seen.flow_run_id)
        .values(owner=REAPER_OWNER, update_time=now)
    ).rowcount
    if moved != 1:
        return False
    session.execute(
        update(TASK).where(TASK.c.id == seen.batch_id, TASK.c.task_status == st.FAILED)
        .values(error_message=truncate_error(reason), update_time=now)
    )
    return True
