"""Which ending of a batch has been notified: ``la_batch_run.notified_status``.

Functions take a Session and never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import RUN, TASK, loads

__all__ = ["claim_notification"]


def claim_notification(session: Session, batch_id: int) -> dict[str, Any] | None:
    """The batch's ending to notify, marked as notified; None when it is not ended or already notified.

    The mark is ``<status>@<end_time>``: a guarded UPDATE moves it once per ending, so of the
    runner's close, the flow-run hooks and the reaper, exactly one caller gets the row; a batch
    resumed and ended again is a new ending.
    """
    row = session.execute(select(TASK).where(TASK.c.id == batch_id)).mappings().first()
    if row is None or row["task_status"] not in st.FINAL:
        return None
    mark = f"{row['task_status']}@{row['end_time']}"
    moved = session.execute(
        update(RUN)
        .where(RUN.c.task_id == batch_id, or_(RUN.c.notified_status.is_(None), RUN.c.notified_status != mark))
        .values(notified_status=mark)
    ).rowcount
    if not moved:
        return None
    try:
        data = loads(row["task_data"])
    except ValueError:  # a malformed panel row: its ending is still worth a notification
        data = None
    return {
        "batch_id": batch_id, "tenant_id": row["tenant_id"], "task_type": row["task_type"],
        "task_name": row["task_name"], "status": row["task_status"],
        "total": row["total_count"], "processed": row["processed_count"], "success": row["success_count"],
        "failed": row["failed_count"], "start_time": row["start_time"], "end_time": row["end_time"],
        "error_message": row["error_message"],
        "retry_failed_of": data.get("retry_failed_of") if isinstance(data, dict) else None,
    }
