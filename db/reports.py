"""Read-only reports on a batch's detail rows, for what operators see in the Prefect UI."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import DETAIL

__all__ = ["FailureReport", "failure_report"]


@dataclass(frozen=True, slots=True)
class FailureReport:
    by_reason: list[tuple[str, int]]  # (reason, items), most frequent first
    first: list[tuple[int, str]]  # (item id, reason) of the first failed items, by item id

    @property
    def failed(self) -> int:
        return sum(n for _, n in self.by_reason)


def failure_report(session: Session, batch_id: int, limit: int = 50) -> FailureReport:
    """Failed items of a batch: counts by reason and the first ``limit`` items (two SELECTs on
    the ``(task_id, status)`` index, one transaction)."""
    failed = (DETAIL.c.task_id == batch_id) & (DETAIL.c.status == st.DETAIL_FAILED)
    reason = func.coalesce(DETAIL.c.error_message, "")
    by_reason = session.execute(
        select(reason, func.count()).where(failed).group_by(reason).order_by(func.count().desc(), reason)
    ).all()
    first = session.execute(
        select(DETAIL.c.item_id, reason).where(failed).order_by(DETAIL.c.item_id).limit(limit)
    ).all()
    return FailureReport([(str(r), int(n)) for r, n in by_reason], [(int(i), str(r)) for i, r in first])
