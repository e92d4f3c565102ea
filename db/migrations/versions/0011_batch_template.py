"""la_batch_template: batch templates the admin panel saves (a named schedule of a batch).

The panel writes the template columns (tenant_id, name, task_type, task_data, cron, timezone,
enabled, create_admin_id, create_time, update_time, delete_time), with the conventions of
la_batch_task (int unix times, soft delete); the maintenance run writes the ``sync_*`` and
``prefect_*`` columns when it turns the row into a schedule of the type's deployment
(tasks/templates_sync.py). Re-runnable after a failure half-way: the table and its index are
created only if missing.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.schema_ops import create_index, create_table, has_table

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLE = "la_batch_template"


def upgrade() -> None:
    create_table(
        TABLE,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("task_type", sa.String(50), nullable=False),
        sa.Column("task_data", sa.Text),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("enabled", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column("create_admin_id", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sync_status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("sync_error", sa.String(500)),
        sa.Column("sync_time", sa.Integer),
        sa.Column("sync_digest", sa.String(64)),
        sa.Column("prefect_deployment_id", sa.String(36)),
        sa.Column("prefect_schedule_id", sa.String(36)),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
        sa.Column("delete_time", sa.Integer),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    create_index("idx_template_tenant", TABLE, ["tenant_id", "task_type"])


def downgrade() -> None:
    if has_table(TABLE):
        op.drop_table(TABLE)
