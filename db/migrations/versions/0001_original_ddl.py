"""The admin panel's two tables, exactly as its DDL creates them.

Skipped table by table when the table already exists (an existing installation).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.ddl import ORIGINAL_DDL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _sqlite_task() -> None:
    op.create_table(
        "la_batch_task",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("task_type", sa.String(50), nullable=False),
        sa.Column("task_status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("total_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("success_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("task_data", sa.Text),
        sa.Column("create_admin_id", sa.Integer, nullable=False),
        sa.Column("start_time", sa.Integer),
        sa.Column("end_time", sa.Integer),
        sa.Column("error_message", sa.Text),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
        sa.Column("delete_time", sa.Integer),
    )
    # SQLite index names are per database, so the two idx_status keys get distinct names.
    op.create_index("idx_tenant_task", "la_batch_task", ["tenant_id", "task_type"])
    op.create_index("idx_task_status", "la_batch_task", ["task_status"])
    op.create_index("idx_create_time", "la_batch_task", ["create_time"])


def _sqlite_detail() -> None:
    op.create_table(
        "la_batch_task_detail",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "task_id", sa.Integer, sa.ForeignKey("la_batch_task.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("item_data", sa.Text),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("result", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("process_time", sa.Integer),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
    )
    op.create_index("idx_task_id", "la_batch_task_detail", ["task_id"])
    op.create_index("idx_detail_status", "la_batch_task_detail", ["status"])


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    sqlite = {"la_batch_task": _sqlite_task, "la_batch_task_detail": _sqlite_detail}
    for table, ddl in ORIGINAL_DDL.items():  # parent first
        if table in existing:
            continue
        if bind.dialect.name == "sqlite":
            sqlite[table]()
        else:
            op.execute(ddl)


def downgrade() -> None:
    """Never drop the admin panel's tables."""
