"""la_batch_template: the admin panel's batch templates, as the maintenance run reads and marks them.

The panel owns the template columns (docs/database.md, "For the admin panel"); this module
writes only the sync columns: ``sync_status`` (``pending`` -> ``synced`` / ``error`` /
``removed``), ``sync_error``, ``sync_time``, ``sync_digest`` (a digest of the template columns
last synced, so an edit is seen whatever ``update_time`` says) and the Prefect ids of the
schedule the row owns. The caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from db._util import now_or
from db.models import BatchTemplate

__all__ = [
    "TEMPLATE", "SYNC_PENDING", "SYNC_SYNCED", "SYNC_ERROR", "SYNC_REMOVED", "SYNC_ERROR_MAX",
    "TemplateRow", "templates_to_sync", "record_sync", "owned_schedules",
]

TEMPLATE: Table = BatchTemplate.__table__  # type: ignore[assignment]

SYNC_PENDING = "pending"
SYNC_SYNCED = "synced"
SYNC_ERROR = "error"
SYNC_REMOVED = "removed"
SYNC_ERROR_MAX = 500  # la_batch_template.sync_error is VARCHAR(500)


@dataclass(frozen=True, slots=True)
class TemplateRow:
    id: int
    tenant_id: int
    name: str
    task_type: str
    task_data: str | None
    cron: str
    timezone: str
    enabled: int
    create_admin_id: int
    delete_time: int | None
    sync_status: str
    sync_digest: str | None
    prefect_deployment_id: str | None
    prefect_schedule_id: str | None

    @property
    def deleted(self) -> bool:
        return self.delete_time is not None

    @property
    def digest(self) -> str:
        """What the schedule depends on; a changed digest is an edit to sync."""
        content = [self.tenant_id, self.name, self.task_type, self.task_data, self.cron, self.timezone,
                   self.enabled, self.create_admin_id, self.deleted]
        return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def changed(self) -> bool:
        return self.sync_status == SYNC_PENDING or self.sync_digest != self.digest


_COLUMNS = [TEMPLATE.c[f.name] for f in fields(TemplateRow)]


def templates_to_sync(session: Session) -> list[TemplateRow]:
    """Every template row but those deleted and already removed from Prefect, oldest first."""
    done = (TEMPLATE.c.delete_time.is_not(None)) & (TEMPLATE.c.sync_status == SYNC_REMOVED)
    rows = session.execute(select(*_COLUMNS).where(~done).order_by(TEMPLATE.c.id))
    return [TemplateRow(*row) for row in rows]


def record_sync(
    session: Session,
    row: TemplateRow,
    status: str,
    *,
    error: str | None = None,
    deployment_id: str | None = None,
    schedule_id: str | None = None,
    keep_schedule: bool = False,
    now: int | None = None,
) -> None:
    """Mark what the sync did with ``row`` as it was read (its digest: a later edit is synced next pass).

    ``keep_schedule``: a refused row keeps the schedule of its last good version.
    """
    values: dict = {
        "sync_status": status,
        "sync_error": None if error is None else error[:SYNC_ERROR_MAX],
        "sync_time": now_or(now),
        "sync_digest": row.digest,
    }
    if not keep_schedule:
        values["prefect_deployment_id"] = deployment_id
        values["prefect_schedule_id"] = schedule_id
    session.execute(update(TEMPLATE).where(TEMPLATE.c.id == row.id).values(**values))


def owned_schedules(session: Session) -> dict[str, int]:
    """Prefect schedule id -> the template row that owns it (a schedule the panel manages)."""
    rows = session.execute(
        select(TEMPLATE.c.prefect_schedule_id, TEMPLATE.c.id).where(TEMPLATE.c.prefect_schedule_id.is_not(None))
    )
    return {str(schedule_id): int(row_id) for schedule_id, row_id in rows}
