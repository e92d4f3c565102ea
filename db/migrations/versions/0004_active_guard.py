"""One active (pending/running, not deleted) batch per (tenant, type), enforced by the DB.

MariaDB/MySQL: a VIRTUAL generated column ``active_key`` with a UNIQUE index (NULLs do not
collide). SQLite: a partial unique index. Older active duplicates that already exist are
marked failed first, so the index can be built. Re-runnable: skipped once the key exists.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

from db.schema_ops import has_column, has_index

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SUPERSEDED = "superseded: duplicate active batch (migration)"
ACTIVE_SQL = "task_status IN ('pending','running') AND delete_time IS NULL"
log = logging.getLogger("alembic.runtime.migration")


def _fail_older_duplicates() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            f"SELECT id, tenant_id, task_type FROM la_batch_task WHERE {ACTIVE_SQL} "
            "ORDER BY tenant_id, task_type, id DESC"
        )
    ).all()
    seen: set[tuple[int, str]] = set()
    older: list[int] = []
    for row_id, tenant_id, task_type in rows:
        key = (tenant_id, task_type)
        if key in seen:
            older.append(row_id)
        seen.add(key)
    now = int(time.time())
    for start in range(0, len(older), 500):
        bind.execute(
            sa.text(
                "UPDATE la_batch_task SET task_status='failed', error_message=:msg,"
                " end_time=:now, update_time=:now WHERE id IN :ids"
            ).bindparams(sa.bindparam("ids", expanding=True)),
            {"msg": SUPERSEDED, "now": now, "ids": older[start : start + 500]},
        )
    if older:
        log.warning("marked %d older duplicate active batches failed: %s", len(older), older[:20])


def upgrade() -> None:
    if has_index("la_batch_task", "uq_task_active"):  # done by an earlier, interrupted run
        return
    if has_index("la_batch_task", "uq_task_running"):  # replaced by 0007's guard already (queued rows stay)
        return
    _fail_older_duplicates()
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE UNIQUE INDEX uq_task_active ON la_batch_task (tenant_id, task_type) "
            f"WHERE {ACTIVE_SQL}"
        )
        return
    column = "" if has_column("la_batch_task", "active_key") else (
        "ADD COLUMN active_key varchar(64) AS "
        f"(IF({ACTIVE_SQL}, CONCAT(tenant_id, ':', task_type), NULL)) VIRTUAL, "
    )
    op.execute(f"ALTER TABLE la_batch_task {column}ADD UNIQUE KEY uq_task_active (active_key)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX uq_task_active")
        return
    op.execute("ALTER TABLE la_batch_task DROP INDEX uq_task_active, DROP COLUMN active_key")
