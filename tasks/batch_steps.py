"""The batch lifecycle's database steps, each one or a few short transactions.

``flows.batch_runner.BatchRun`` calls them in order: describe (an existing row), open (validate,
claim, detail rows), close (final state from a recount). A refusal is raised once, as a
``BatchError``, and the flow maps it to a state once. They are plain functions, not Prefect
tasks: a refused request is not a failed task run with a traceback, and a batch costs three
task runs fewer.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import InterfaceError, OperationalError

from batchcore.errors import (
    BatchCancelled,
    BatchError,
    BatchNotClaimable,
    InvalidInput,
    InvalidItems,
    UnknownBatch,
    UnknownBatchType,
)
from batchcore.settings import get_settings
from batchlib.batch_types import BatchScope, get_batch_type
from batchlib.notify import batch_ended
from batchlib.task_data import (
    decode_task_data,
    fits_column,
    request_items,
    staged_request,
    summary,
    unstaged_request,
    validate_request,
)
from batchlib.validation import check_admin_id, check_task_name
from db import (
    add_details,
    add_details_from,
    check_fence,
    claim_batch,
    create_batch,
    finish_batch,
    get_batch,
    get_engine,
    recount,
    run_transaction,
    set_total,
    staged_details,
)
from db import statuses as st
from db._util import TASK
from db.failures import retry_items, retry_source
from db.maintenance import fail_pending

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "refuse_outages", "BatchRow", "OpenedBatch", "describe_batch", "open_batch", "close_batch", "counts_dict", "owner_name",
]


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _tx(fn):
    return run_transaction(get_engine(), fn)


def refuse_outages(fn: Callable[P, R]) -> Callable[P, R]:
    """A mirror still unreachable after ``run_transaction``'s retries, while a run opens, is a
    refusal the user can act on ("try again later"), not a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise BatchError(f"the mirror database is unreachable ({_db_error(exc)}); try again later") from None

    return wrapper


def _db_error(exc: Exception) -> str:
    code = getattr(getattr(exc, "orig", None), "args", [None])[0]
    return f"{type(exc).__name__} {code}" if isinstance(code, int) else type(exc).__name__


@dataclass(frozen=True, slots=True)
class BatchRow:
    batch_id: int
    tenant_id: int
    task_type: str
    task_status: str
    task_data: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class OpenedBatch:
    batch_id: int
    fence: int
    total: int
    pending: int
    resumed: bool
    error: str | None = None  # set when the batch was closed as failed while opening


@refuse_outages
def describe_batch(batch_id: int, task_type: str) -> BatchRow:
    """Read an existing batch row (admin panel insert, or one to resume).

    A row the admin panel deleted, or cancelled before any run started it, is refused here
    (BatchCancelled), before the lease or any collecting; the claim checks it again.

    A pending row whose task_data cannot be read (see ``batchlib.task_data``) is marked failed
    with the reason; nothing else is written.
    """
    row = _tx(lambda s: get_batch(s, batch_id))
    if row is None:
        raise UnknownBatch(batch_id)
    if row.delete_time is not None:
        raise BatchCancelled(batch_id, "deleted")
    if row.task_status == st.CANCELLED and row.start_time is None:
        raise BatchCancelled(batch_id, st.CANCELLED)
    if row.task_type != task_type:
        raise BatchNotClaimable(batch_id, row.task_status, f"it is a {row.task_type} batch, not {task_type}")
    try:
        data = decode_task_data(row.task_data, get_batch_type(task_type))
    except InvalidInput as exc:
        reason = f"invalid task_data: {exc}"
        _tx(lambda s: fail_pending(s, batch_id, reason))
        raise InvalidItems(f"batch {batch_id}: {reason}") from None
    return BatchRow(row.id, row.tenant_id, row.task_type, row.task_status, data)


@refuse_outages
def open_batch(
    task_type: str,
    tenant_id: int,
    task_data: dict[str, Any] | None,
    *,
    task_name: str,
    create_admin_id: int,
    batch_id: int | None,
    flow_run_id: str | None,
    takeover: bool = False,
    collected: list[tuple[int, dict[str, Any] | None]] | None = None,
    collect_error: str | None = None,
    source: str | None = None,
) -> OpenedBatch:
    """Validate, then create or claim the batch row and write its pending detail rows.

    A new batch: validation errors write nothing; its row's task_data is the request, or only
    a summary (``{"items_count", "source"}``) when the items came from a file (``source``) or
    would not fit the TEXT column; the items themselves are the detail rows. An existing row
    (admin panel, staged, resume): a row whose input is invalid is marked ``failed`` with a
    readable reason, then the error is raised. A pending row that already has detail rows was
    staged (panel SQL, ``flows.stage_items``): those rows are its items, validated like any.
    ``collected`` items (from the type's ``collect``) replace what ``parse`` returns; when
    collecting failed (``collect_error``), the valid request is recorded as a ``failed`` batch
    with that reason and no detail rows (a resume collects again).
    Detail rows are inserted in one transaction (multi-row INSERTs), so they are all there or none.
    """
    settings = get_settings()
    batch_type = get_batch_type(task_type)
    owner = owner_name()

    def existing(session) -> tuple[bool, bool]:
        """(has detail rows, is pending): a pending row with detail rows was staged."""
        if batch_id is None or recount(session, batch_id).total == 0:
            return False, False
        row = get_batch(session, batch_id)
        return True, row is not None and row.task_status == st.PENDING

    has_rows, staged = _tx(existing)
    resuming = has_rows and not staged
    items = query = None
    if not resuming:
        def validate(session) -> list:
            if retry_source(task_data) is not None:  # {"retry_failed_of": 42}: batch 42's failed items
                if batch_id is None:
                    check_task_name(task_name)
                    check_admin_id(create_admin_id)
                return _retry_items(session, batch_type, tenant_id, task_data)
            if batch_id is None:
                return validate_request(session, batch_type, tenant_id, task_data, settings,
                                        task_name=task_name, create_admin_id=create_admin_id)
            if staged:
                request = staged_request(batch_type, task_data, staged_details(session, batch_id))
                return batch_type.parse(session, tenant_id, request, settings)
            return request_items(session, batch_type, tenant_id, unstaged_request(task_data), settings)

        try:
            parsed = _tx(validate)
        except InvalidInput as exc:
            if batch_id is not None:
                _fail_row(batch_id, owner, flow_run_id, f"invalid {'items' if staged else 'task_data'}: {exc}")
            raise
        if isinstance(parsed, Select):  # a whole-tenant check: the rows come from the accounts table
            query, parsed = parsed, None
        items = None if staged else parsed
        if collected is not None:
            items, query = collected, None
        if batch_id is None and retry_source(task_data) is not None:  # the link: {"retry_failed_of": 42, "items_count": N}
            task_data = {**task_data, "items_count": len(items)}
        if not staged and query is None and not items and batch_type.collect is None:
            raise InvalidInput(f"tenant {tenant_id} has no items to process for {task_type}")
    stored = task_data
    if items and (source is not None or not fits_column(task_data)):
        stored = summary(len(items), source or "flow parameters")

    def claim(session):
        target = batch_id
        if target is None:
            target = create_batch(
                session, tenant_id=tenant_id, task_type=task_type, task_name=task_name,
                create_admin_id=create_admin_id, task_data=stored,
            )
        return claim_batch(session, target, owner=owner, flow_run_id=flow_run_id, takeover=takeover)

    claimed = _tx(claim)
    if collect_error is not None and not resuming:
        _finish(claimed.batch_id, claimed.fence, st.FAILED, collect_error)
        return OpenedBatch(claimed.batch_id, claimed.fence, 0, 0, resuming, collect_error)
    step = settings.detail_insert_chunk

    def details(session):
        # One transaction for all of them (multi-row INSERTs of `step` rows, or one INSERT ...
        # SELECT): a run that dies midway leaves none, so a resume, which trusts existing
        # details, never misses items.
        if query is not None:
            add_details_from(session, claimed.batch_id, claimed.fence, query)
        for start in range(0, len(items or ()), step):
            add_details(session, claimed.batch_id, claimed.fence, items[start : start + step])
        set_total(session, claimed.batch_id, claimed.fence)
        return recount(session, claimed.batch_id)

    counts = _tx(details)
    if counts.pending == 0:
        # Nothing left to do (a resume of a batch whose items all finished): close it now.
        _finish(claimed.batch_id, claimed.fence, st.COMPLETED)
    return OpenedBatch(claimed.batch_id, claimed.fence, counts.total, counts.pending, resuming)


def _retry_items(session, batch_type, tenant_id: int, task_data: dict[str, Any]):
    """For ``{"retry_failed_of": 42}``: batch 42's failed items (the new batch's detail rows)."""
    source = retry_source(task_data)
    if batch_type.collect is not None:
        raise InvalidInput(f"cannot retry batch {source}: a {batch_type.name} batch lists its items again; start a new one")
    return retry_items(session, source, tenant_id, batch_type.name)


def _fail_row(batch_id: int, owner: str, flow_run_id: str | None, reason: str) -> None:
    def fail(session) -> None:
        claimed = claim_batch(session, batch_id, owner=owner, flow_run_id=flow_run_id)
        finish_batch(session, batch_id, claimed.fence, st.FAILED, reason)

    _tx(fail)


def close_batch(batch_id: int, fence: int, status: str, error_message: str | None = None) -> dict[str, Any]:
    """Final state + counters from a recount (fenced: a run that lost the batch writes nothing).

    Returns the counts and the ``status`` the row ended in: ``cancelled`` when the admin panel
    cancelled or deleted it meanwhile, whatever was asked."""
    def close(session) -> dict[str, Any]:
        counts = finish_with_summary(session, batch_id, fence, status, error_message)
        final = session.execute(select(TASK.c.task_status).where(TASK.c.id == batch_id)).scalar_one()
        return {**counts_dict(counts), "status": final}

    closed = _tx(close)
    batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return closed


def _finish(batch_id: int, fence: int, status: str, error_message: str | None = None):
    counts = _tx(lambda session: finish_with_summary(session, batch_id, fence, status, error_message))
    batch_ended(batch_id)  # email / webhook, in the background, once per ending
    return counts


def finish_with_summary(session, batch_id: int, fence: int, status: str, error_message: str | None):
    """finish_batch, preceded in the same transaction by the type's ``on_close`` (if any), whose
    summary is appended to ``error_message``. Every path that finishes a batch it owns comes here:
    the runner's close, and the hooks of a cancelled, crashed or failed flow run."""
    now = int(time.time())
    check_fence(session, batch_id, fence, now)  # a stale run must not run side effects
    message = _with_summary(error_message, closing_summary(session, batch_id, status, now))
    return finish_batch(session, batch_id, fence, status, message)


def closing_summary(session, batch_id: int, status: str, now: int) -> str | None:
    """What the batch type's ``on_close`` has to say about a batch ending in ``status`` (e.g.
    pin_sync's first failed pins); None for types without one. Also used by the reaper."""
    row = get_batch(session, batch_id)
    try:
        on_close = get_batch_type(row.task_type).on_close if row is not None else None
    except UnknownBatchType:
        return None
    return on_close(session, BatchScope(batch_id, row.tenant_id), status, now) if on_close else None


def _with_summary(message: str | None, summary: str | None) -> str | None:
    return "; ".join(m for m in (message, summary) if m) or None


def counts_dict(counts) -> dict[str, int]:
    return {
        "total": counts.total, "processed": counts.processed, "success": counts.success,
        "failed": counts.failed, "pending": counts.pending,
    }
