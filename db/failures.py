"""Failed items of a finished batch: what the command line shows, and what a retry copies.

A retry of batch 42 is a new batch row of the same tenant and type whose detail rows are
42's failed items: ``item_data`` copied, plus ``previous_error`` (42's ``error_message`` of
that item), so the panel shows the retry with its own counters and 42 keeps its history.
Functions take a Session and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from batchcore.errors import InvalidInput
from db import statuses as st
from db._util import DETAIL, TASK, loads

__all__ = ["RETRY_KEY", "retry_source", "failed_details", "retry_items"]

RETRY_KEY = "retry_failed_of"  # task_data {"retry_failed_of": 42, "items_count": N}
_RETRY_KEYS = frozenset({RETRY_KEY, "items_count"})


def retry_source(task_data: dict[str, Any] | None) -> int | None:
    """The batch a request retries (``task_data["retry_failed_of"]``), None for other requests."""
    if not task_data or RETRY_KEY not in task_data:
        return None
    source = task_data[RETRY_KEY]
    if isinstance(source, bool) or not isinstance(source, int) or source <= 0:
        raise InvalidInput(f"{RETRY_KEY} must be a batch id (a positive integer), got {source!r}")
    unknown = sorted(set(task_data) - _RETRY_KEYS)
    if unknown:
        raise InvalidInput(f"a retry takes only {RETRY_KEY}; unexpected keys: {', '.join(unknown)}")
    return source


def failed_details(session: Session, batch_id: int, limit: int | None = None) -> tuple[int, list[tuple[int, Any, str]]]:
    """(how many items failed, the first ``limit`` of them as (item_id, item_data, error)), by item id."""
    where = (DETAIL.c.task_id == batch_id, DETAIL.c.status == st.DETAIL_FAILED)
    total = session.execute(select(func.count()).select_from(DETAIL).where(*where)).scalar_one()
    query = select(DETAIL.c.item_id, DETAIL.c.item_data, DETAIL.c.error_message).where(*where).order_by(DETAIL.c.item_id)
    rows = session.execute(query if limit is None else query.limit(limit)).all()
    return int(total), [(int(i), loads(data), str(error or "")) for i, data, error in rows]


def retry_items(session: Session, source: int, tenant_id: int, task_type: str) -> list[tuple[int, dict[str, Any]]]:
    """The detail rows of a retry of ``source``: its failed items, each with its previous error.

    Refused (InvalidInput, nothing written) when ``source`` is unknown, of another tenant or
    type, still active, or has no failed item.
    """
    row = session.execute(
        select(TASK.c.tenant_id, TASK.c.task_type, TASK.c.task_status, TASK.c.delete_time).where(TASK.c.id == source)
    ).first()
    if row is None or row.delete_time is not None:
        raise InvalidInput(f"cannot retry batch {source}: it does not exist")
    if row.task_type != task_type:
        raise InvalidInput(f"cannot retry batch {source}: it is a {row.task_type} batch, not {task_type}")
    if row.tenant_id != tenant_id:
        raise InvalidInput(f"cannot retry batch {source}: it belongs to tenant {row.tenant_id}, not tenant {tenant_id}")
    if row.task_status in st.ACTIVE:
        raise InvalidInput(f"cannot retry batch {source}: it is still {row.task_status}; retry once it has ended")
    _, failed = failed_details(session, source)
    if not failed:
        raise InvalidInput(f"cannot retry batch {source}: none of its items failed")
    return [
        (item_id, {**(data if isinstance(data, dict) else {}), "previous_error": error})
        for item_id, data, error in failed
    ]
