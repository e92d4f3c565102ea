"""The mirror repository: batch lifecycle in la_batch_task / la_batch_task_detail.

Every function takes a Session and never commits: the caller owns the transaction
(usually through ``run_transaction``). Fenced writes call ``check_fence`` first; its
UPDATE row-locks the la_batch_run row, so writers of one batch serialise and a stale owner
(fenced out by a later claim or by the reaper) writes nothing.

Counters: ``processed = success + failed + skipped`` (a skipped item is processed but
neither a success nor a failure), and they always move by the rows a guarded
``UPDATE ... WHERE status='pending'`` actually moved, so recording twice is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batchcore.errors import (
    BatchAlreadyActive,
    BatchCancelled,
    BatchNotClaimable,
    InvalidItems,
    StaleFence,
    UnknownBatch,
)
from batchcore.json_text import TASK_DATA_MAX_BYTES, decode_json
from batchcore.outcomes import ItemOutcome, truncate_error
from db import statuses as st
from db._util import DETAIL, RUN, TASK, chunks, dumps, insert_ignore, loads, now_or
from db.models import BatchTask

__all__ = [
    "Claim", "Counts", "Moved",
    "create_batch", "claim_batch", "check_fence", "heartbeat",
    "add_details", "add_details_from", "set_total", "pending_items", "record_outcomes", "finish_batch",
    "recount", "counters", "get_batch", "find_active", "holds_key", "is_active_guard_violation", "AUTO_RESUME_NOTE",
    "stage_details", "staged_details",
]


@dataclass(frozen=True, slots=True)
class Claim:
    batch_id: int
    fence: int
    tenant_id: int
    task_type: str
    task_data: dict[str, Any] | None
    resumed: bool


@dataclass(frozen=True, slots=True)
class Counts:
    total: int = 0
    pending: int = 0
    success: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def processed(self) -> int:
        return self.success + self.failed + self.skipped


@dataclass(frozen=True, slots=True)
class Moved:
    success: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.success + self.failed + self.skipped


def holds_key() -> ColumnElement[bool]:
    """The rows that hold their (tenant, type): a run may still make platform calls for them.

    ``running`` (soft-deleted or not), or ``cancelled`` by the admin panel while it ran and not
    yet closed by its run (``end_time`` is set by whoever closes it: the run, its hooks, the
    reaper). The unique key of revision 0007 is built on the same condition, so at most one
    such row exists per (tenant, type); ``pending`` rows are not in it (the panel's queue).
    """
    return or_(
        TASK.c.task_status == st.RUNNING,
        and_(TASK.c.task_status == st.CANCELLED, TASK.c.start_time.is_not(None), TASK.c.end_time.is_(None)),
    )


def is_active_guard_violation(err: IntegrityError) -> bool:
    """True when the one-running-batch guard (not another key) rejected the row."""
    text = str(err.orig)
    return "uq_task_running" in text or "la_batch_task.tenant_id, la_batch_task.task_type" in text


# -- lookups ---------------------------------------------------------------------------


def get_batch(session: Session, batch_id: int) -> BatchTask | None:
    return session.get(BatchTask, batch_id)


def find_active(session: Session, tenant_id: int, task_type: str) -> int | None:
    """The id of a batch of (tenant, type) that is running (or still stopping), else of the
    oldest one waiting (pending, not deleted); None when there is neither."""
    waiting = and_(TASK.c.task_status == st.PENDING, TASK.c.delete_time.is_(None))
    return session.execute(
        select(TASK.c.id)
        .where(TASK.c.tenant_id == tenant_id, TASK.c.task_type == task_type, or_(holds_key(), waiting))
        .order_by(case((holds_key(), 0), else_=1), TASK.c.id)
        .limit(1)
    ).scalar_one_or_none()


def recount(session: Session, batch_id: int) -> Counts:
    """Counts from one ``GROUP BY status`` over the detail rows."""
    rows = session.execute(
        select(DETAIL.c.status, func.count())
        .where(DETAIL.c.task_id == batch_id)
        .group_by(DETAIL.c.status)
    ).all()
    by = {status: int(n) for status, n in rows}
    return Counts(
        total=sum(by.values()),
        pending=by.get(st.DETAIL_PENDING, 0),
        success=by.get(st.DETAIL_SUCCESS, 0),
        failed=by.get(st.DETAIL_FAILED, 0),
        skipped=by.get(st.DETAIL_SKIPPED, 0),
    )


def counters(session: Session, batch_id: int) -> Counts:
    """Counts as la_batch_task stores them (pending and skipped derived)."""
    row = session.execute(
        select(TASK.c.total_count, TASK.c.processed_count, TASK.c.success_count, TASK.c.failed_count)
        .where(TASK.c.id == batch_id)
    ).one_or_none()
    if row is None:
        raise UnknownBatch(batch_id)
    total, processed, success, failed = (int(v) for v in row)
    return Counts(
        total=total,
        pending=total - processed,
        success=success,
        failed=failed,
        skipped=processed - success - failed,
    )


# -- create and claim ------------------------------------------------------------------

# error_message of a batch the maintenance flow resumed by itself ("auto-resume 1/3 after: ...").
# A claim and a clean finish keep it, so the admin panel still sees that the batch was resumed.
AUTO_RESUME_NOTE = "auto-resume"
_KEPT_NOTE = case((TASK.c.error_message.like(AUTO_RESUME_NOTE + " %"), TASK.c.error_message), else_=None)


def create_batch(
    session: Session,
    *,
    tenant_id: int,
    task_type: str,
    task_name: str,
    create_admin_id: int,
    task_data: dict[str, Any] | None,
    now: int | None = None,
) -> int:
    """Insert a pending batch; BatchAlreadyActive if (tenant, type) has one running or waiting.

    The check is for requests that start a batch themselves (CLI, a deployment run with a
    tenant id): they do not queue behind the admin panel's rows. The database's own guard is
    on the claim (two runs racing here: the second claim hits the unique key).

    InvalidItems when ``task_data`` does not fit the panel's ``TEXT`` column (64 KiB): MariaDB
    in strict mode refuses the row. Callers keep long item lists in the detail rows and store
    only their summary here (``batchlib.task_data.summary``), so this is a last guard.
    """
    now = now_or(now)
    text = dumps(task_data)
    if text is not None and len(text.encode()) > TASK_DATA_MAX_BYTES:
        raise InvalidItems(
            f"task_data is {len(text.encode())} bytes and la_batch_task.task_data holds {TASK_DATA_MAX_BYTES}: "
            "keep the items in the detail rows and a summary in task_data (docs/batch-types.md, Large item lists)"
        )
    active = find_active(session, tenant_id, task_type)
    if active is not None:
        raise BatchAlreadyActive(tenant_id, task_type, active)
    result = session.execute(TASK.insert().values(
        tenant_id=tenant_id,
        task_name=task_name,
        task_type=task_type,
        task_status=st.PENDING,
        total_count=0,
        processed_count=0,
        success_count=0,
        failed_count=0,
        task_data=text,
        create_admin_id=create_admin_id,
        create_time=now,
        update_time=now,
    ))
    return int(result.inserted_primary_key[0])


def _parse_task_data(batch_id: int, text: str | None) -> dict[str, Any] | None:
    data = decode_json(text, what=f"batch {batch_id}: task_data", max_bytes=TASK_DATA_MAX_BYTES) if text else None
    if data is not None and not isinstance(data, dict):
        raise InvalidItems(f"batch {batch_id}: task_data must be a JSON object")
    return data


def claim_batch(
    session: Session,
    batch_id: int,
    *,
    owner: str,
    flow_run_id: str | None,
    takeover: bool = False,
    now: int | None = None,
) -> Claim:
    """Make this run the owner of a batch (status -> running) and return its new fence.

    Claimable: pending, failed, cancelled (a resume), and running only with ``takeover``.
    Never claimable: a soft-deleted row, and a row cancelled before any run started it
    (``start_time`` NULL): the admin panel's cancel of a row already dispatched but not yet
    claimed means "never start it" (BatchCancelled). A pending row whose (tenant, type) is held
    by another run hits the unique key: BatchAlreadyActive, and the row stays pending (queued).
    Lock order is la_batch_run, then la_batch_task, as in every fenced write.
    """
    now = now_or(now)
    if session.execute(select(TASK.c.id).where(TASK.c.id == batch_id)).first() is None:
        raise UnknownBatch(batch_id)
    lock_run = select(RUN.c.fence).where(RUN.c.task_id == batch_id).with_for_update()
    fence = session.execute(lock_run).scalar_one_or_none()
    if fence is None:  # first claim: create the run row (a racing claimer's insert is ignored)
        session.execute(
            insert_ignore(RUN).values(task_id=batch_id, fence=0, create_time=now, update_time=now)
        )
        fence = session.execute(lock_run).scalar_one()
    task = session.execute(
        select(
            TASK.c.task_status, TASK.c.tenant_id, TASK.c.task_type, TASK.c.task_data, TASK.c.delete_time,
            TASK.c.start_time,
        )
        .where(TASK.c.id == batch_id)
        .with_for_update()
    ).one()
    claimable = st.CLAIMABLE + ((st.RUNNING,) if takeover else ())
    if task.delete_time is not None:
        raise BatchCancelled(batch_id, "deleted")
    if task.task_status == st.CANCELLED and task.start_time is None:
        raise BatchCancelled(batch_id, "cancelled")
    if task.task_status not in claimable:
        why = "pass takeover=True to take it over" if task.task_status == st.RUNNING else ""
        raise BatchNotClaimable(batch_id, task.task_status, why)
    data = _parse_task_data(batch_id, task.task_data)
    try:
        with session.begin_nested():
            moved = session.execute(
                update(TASK)
                .where(TASK.c.id == batch_id, TASK.c.task_status.in_(claimable))
                .values(
                    task_status=st.RUNNING,
                    start_time=func.coalesce(TASK.c.start_time, now),
                    end_time=None,
                    error_message=_KEPT_NOTE,
                    update_time=now,
                )
            ).rowcount
    except IntegrityError as err:
        if not is_active_guard_violation(err):
            raise
        other = find_active(session, task.tenant_id, task.task_type)
        raise BatchAlreadyActive(task.tenant_id, task.task_type, other) from err
    if moved != 1:  # pragma: no cover - we hold the row lock
        raise BatchNotClaimable(batch_id, task.task_status, "changed while claiming")
    session.execute(
        update(RUN)
        .where(RUN.c.task_id == batch_id)
        .values(fence=RUN.c.fence + 1, owner=owner, flow_run_id=flow_run_id, heartbeat_time=now, update_time=now)
    )
    return Claim(
        batch_id=batch_id,
        fence=int(fence) + 1,
        tenant_id=int(task.tenant_id),
        task_type=str(task.task_type),
        task_data=data,
        resumed=task.task_status != st.PENDING,
    )


# -- fenced writes ---------------------------------------------------------------------


def check_fence(session: Session, batch_id: int, fence: int, now: int | None = None) -> None:
    """Heartbeat the run row if we still own it (row-locking it); else raise StaleFence."""
    now = now_or(now)
    matched = session.execute(
        update(RUN)
        .where(RUN.c.task_id == batch_id, RUN.c.fence == fence)
        .values(heartbeat_time=now, update_time=now)
    ).rowcount
    if matched != 1:
        raise StaleFence(batch_id, fence)


def heartbeat(session: Session, batch_id: int, fence: int, now: int | None = None) -> None:
    """check_fence, plus la_batch_task.update_time so the admin panel sees the run alive."""
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    session.execute(update(TASK).where(TASK.c.id == batch_id).values(update_time=now))


def add_details(
    session: Session,
    batch_id: int,
    fence: int,
    items: Sequence[tuple[int, dict[str, Any] | None]],
    now: int | None = None,
) -> int:
    """Insert pending detail rows for items not there yet; returns how many were inserted."""
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    return _insert_details(session, batch_id, items, now)


def add_details_from(session: Session, batch_id: int, fence: int, ids: Select, now: int | None = None) -> int:
    """Insert a pending detail row (no item_data) for every item id ``ids`` selects, in one
    ``INSERT ... SELECT``: the ids never leave the database (a whole-tenant check of 10,000
    accounts costs one statement instead of 10,000 shipped rows). Ids already there are
    skipped; returns how many were inserted."""
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    source = ids.subquery()
    rows = select(
        literal(batch_id), source.c[0], literal(st.DETAIL_PENDING), literal(now), literal(now),
    )
    columns = ["task_id", "item_id", "status", "create_time", "update_time"]
    return int(session.execute(insert_ignore(DETAIL).from_select(columns, rows)).rowcount)


def stage_details(
    session: Session, batch_id: int, items: Sequence[tuple[int, dict[str, Any] | None]], now: int | None = None
) -> int:
    """Insert pending detail rows for a batch nobody has claimed yet (staged items, no fence:
    its run validates them when it claims the batch); returns how many were inserted."""
    now = now_or(now)
    status = session.execute(select(TASK.c.task_status).where(TASK.c.id == batch_id)).scalar_one_or_none()
    if status != st.PENDING:
        raise BatchNotClaimable(batch_id, str(status), "items can only be staged for a pending batch")
    return _insert_details(session, batch_id, items, now)


def staged_details(session: Session, batch_id: int) -> list[tuple[int, str | None]]:
    """(item_id, item_data text) of every detail row of a batch, by item_id (not decoded: the
    caller checks untrusted staged rows with the task_data limits)."""
    rows = session.execute(
        select(DETAIL.c.item_id, DETAIL.c.item_data).where(DETAIL.c.task_id == batch_id).order_by(DETAIL.c.item_id)
    ).all()
    return [(int(item_id), data) for item_id, data in rows]


def _insert_details(
    session: Session, batch_id: int, items: Sequence[tuple[int, dict[str, Any] | None]], now: int
) -> int:
    if not items:
        return 0
    rows = [
        {
            "task_id": batch_id,
            "item_id": int(item_id),
            "item_data": dumps(data),
            "status": st.DETAIL_PENDING,
            "create_time": now,
            "update_time": now,
        }
        for item_id, data in items
    ]
    return int(session.execute(insert_ignore(DETAIL), rows).rowcount)


def set_total(session: Session, batch_id: int, fence: int, now: int | None = None) -> int:
    """total_count := number of detail rows; returns it."""
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    total = session.execute(
        select(func.count()).select_from(DETAIL).where(DETAIL.c.task_id == batch_id)
    ).scalar_one()
    session.execute(update(TASK).where(TASK.c.id == batch_id).values(total_count=total, update_time=now))
    return int(total)


def pending_items(
    session: Session, batch_id: int, after_item_id: int = 0, limit: int = 5000
) -> list[tuple[int, dict[str, Any] | None]]:
    """One keyset page of pending items, by item_id."""
    rows = session.execute(
        select(DETAIL.c.item_id, DETAIL.c.item_data)
        .where(
            DETAIL.c.task_id == batch_id,
            DETAIL.c.status == st.DETAIL_PENDING,
            DETAIL.c.item_id > after_item_id,
        )
        .order_by(DETAIL.c.item_id)
        .limit(limit)
    ).all()
    return [(int(item_id), loads(data)) for item_id, data in rows]


def _move_pending(session: Session, batch_id: int, status: str, part: Sequence[ItemOutcome], now: int) -> int:
    """One guarded UPDATE of up to 500 pending rows to ``status``, with each row's result and
    error (a CASE on item_id); returns the rows it moved.

    Written as the driver's SQL when its placeholders are known: SQLAlchemy builds two bound
    literals, each with a cache key, per row of a CASE, which cost ~0.03 ms of CPU per item, a
    third of a flush (docs/benchmarks.md). The statement is the same as the SQLAlchemy one below.
    """
    results = {o.item_id: dumps(o.result) for o in part}
    errors = {o.item_id: truncate_error(o.error) for o in part}
    connection = session.connection()
    dialect = connection.dialect
    mark = {"format": "%s", "pyformat": "%s", "qmark": "?"}.get(dialect.paramstyle)
    if mark is None:
        stmt = (
            update(DETAIL)
            .where(DETAIL.c.task_id == batch_id, DETAIL.c.status == st.DETAIL_PENDING, DETAIL.c.item_id.in_(list(results)))
            .values(status=status, result=_case(results), error_message=_case(errors), process_time=now, update_time=now)
        )
        return int(session.execute(stmt).rowcount)
    quote = dialect.identifier_preparer.quote
    item_id = quote(DETAIL.c.item_id.name)
    params: list[Any] = [status]
    sets = [f"{quote(DETAIL.c.status.name)} = {mark}"]
    for column, values in ((DETAIL.c.result, results), (DETAIL.c.error_message, errors)):
        whens = [(i, v) for i, v in values.items() if v is not None]
        if whens:
            sets.append(f"{quote(column.name)} = CASE {item_id}{f' WHEN {mark} THEN {mark}' * len(whens)} ELSE NULL END")
            params.extend(x for pair in whens for x in pair)
        else:
            sets.append(f"{quote(column.name)} = NULL")
    sets += [f"{quote(DETAIL.c.process_time.name)} = {mark}", f"{quote(DETAIL.c.update_time.name)} = {mark}"]
    params += [now, now, batch_id, st.DETAIL_PENDING, *results]
    sql = (
        f"UPDATE {dialect.identifier_preparer.format_table(DETAIL)} SET {', '.join(sets)}"
        f" WHERE {quote(DETAIL.c.task_id.name)} = {mark} AND {quote(DETAIL.c.status.name)} = {mark}"
        f" AND {item_id} IN ({', '.join([mark] * len(results))})"
    )
    return int(connection.exec_driver_sql(sql, tuple(params)).rowcount)


def _case(values: dict[int, str | None]) -> Any:
    whens = {item_id: v for item_id, v in values.items() if v is not None}
    if not whens:
        return None
    return case(whens, value=DETAIL.c.item_id, else_=literal(None))


def record_outcomes(
    session: Session,
    batch_id: int,
    fence: int,
    outcomes: Sequence[ItemOutcome],
    now: int | None = None,
) -> Moved:
    """Move pending details to their final state; bump counters by the rows that moved.

    Statements: 1 fence check + 1 UPDATE per (final status, 500 items) + 1 counter UPDATE.
    """
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    latest = {o.item_id: o for o in outcomes}  # one outcome per item: the last one wins
    moved = {s: 0 for s in st.DETAIL_FINAL}
    for status in st.DETAIL_FINAL:
        group = [o for o in latest.values() if o.status == status]
        for part in chunks(group):
            moved[status] += _move_pending(session, batch_id, status, part, now)
    result = Moved(**moved)
    if result.total:
        session.execute(
            update(TASK)
            .where(TASK.c.id == batch_id)
            .values(
                processed_count=TASK.c.processed_count + result.total,
                success_count=TASK.c.success_count + result.success,
                failed_count=TASK.c.failed_count + result.failed,
                update_time=now,
            )
        )
    return result


def finish_batch(
    session: Session,
    batch_id: int,
    fence: int,
    status: str,
    error_message: str | None = None,
    now: int | None = None,
) -> Counts:
    """Move a running batch to a final status; counters are set from a recount.

    The admin panel's cancel has the last word: a batch it set to ``cancelled`` or soft-deleted
    while it ran ends ``cancelled`` whatever ``status`` the run asked for (completed, failed).
    """
    if status not in st.FINAL:
        raise ValueError(f"finish_batch: {status!r} is not a final status {st.FINAL}")
    now = now_or(now)
    check_fence(session, batch_id, fence, now)
    row = session.execute(
        select(TASK.c.task_status, TASK.c.delete_time).where(TASK.c.id == batch_id).with_for_update()
    ).one_or_none()
    if row is not None and row.task_status in (st.RUNNING, st.CANCELLED) and (
        row.task_status == st.CANCELLED or row.delete_time is not None
    ):
        status = st.CANCELLED
    counts = recount(session, batch_id)
    done = session.execute(
        update(TASK)
        .where(TASK.c.id == batch_id, TASK.c.task_status.in_(_finishable_from(status)))
        .values(_final_values(counts, status, error_message, now))
    ).rowcount
    if done != 1:
        current = session.execute(select(TASK.c.task_status).where(TASK.c.id == batch_id)).scalar()
        raise BatchNotClaimable(batch_id, str(current), "only a running batch can be finished")
    return counts


def _finishable_from(status: str) -> tuple[str, ...]:
    """A running batch can end in any final state; one cancelled by the admin panel while
    running is still ours to close (end_time, true counters)."""
    return (st.RUNNING, st.CANCELLED) if status == st.CANCELLED else (st.RUNNING,)


def cancel_note(counts: Counts) -> str | None:
    """What a cancelled batch's row says about the items it never reached (their detail rows
    stay ``pending``, so a resume can still process them)."""
    if not counts.pending:
        return None
    return f"cancelled: {counts.pending} of {counts.total} items not processed (their detail rows stay pending)"


def _final_values(counts: Counts, status: str, error_message: str | None, now: int) -> dict[str, Any]:
    if status == st.CANCELLED:
        error_message = "; ".join(m for m in (cancel_note(counts), error_message) if m) or None
    return {
        "task_status": status,
        "end_time": now,
        "update_time": now,
        "error_message": _KEPT_NOTE if error_message is None else truncate_error(error_message),
        "total_count": counts.total,
        "processed_count": counts.processed,
        "success_count": counts.success,
        "failed_count": counts.failed,
    }
