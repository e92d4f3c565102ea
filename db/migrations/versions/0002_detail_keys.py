"""Details: unique (task_id, item_id) and index (task_id, status).

Duplicate (task_id, item_id) rows from before would block the unique key; the later
copies are deleted (the lowest id is kept) and their count is logged. Re-runnable: each
step is skipped when its result is there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from db.schema_ops import create_index, drop_index, has_index

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def _drop_duplicate_details() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT d.id FROM la_batch_task_detail d JOIN ("
            " SELECT task_id, item_id, MIN(id) AS keep_id FROM la_batch_task_detail"
            " GROUP BY task_id, item_id HAVING COUNT(*) > 1) k"
            " ON d.task_id = k.task_id AND d.item_id = k.item_id AND d.id <> k.keep_id"
        )
    ).scalars().all()
    for start in range(0, len(rows), 500):
        chunk = rows[start : start + 500]
        bind.execute(
            sa.text("DELETE FROM la_batch_task_detail WHERE id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": chunk},
        )
    if rows:
        log.warning("deleted %d duplicate la_batch_task_detail rows before adding uq_detail_task_item", len(rows))


def upgrade() -> None:
    if not has_index("la_batch_task_detail", "uq_detail_task_item"):
        _drop_duplicate_details()
    create_index("uq_detail_task_item", "la_batch_task_detail", ["task_id", "item_id"], unique=True)
    create_index("idx_detail_task_status", "la_batch_task_detail", ["task_id", "status"])


def downgrade() -> None:
    drop_index("idx_detail_task_status", "la_batch_task_detail")
    drop_index("uq_detail_task_item", "la_batch_task_detail")
