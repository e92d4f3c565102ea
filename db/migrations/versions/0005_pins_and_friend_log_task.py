"""pin_sync's pins table; friend request log rows tied to the batch that sent them.

- ``la_ipfs_pin``: the pins of each tenant's IPFS node as the last syncs saw them; one row per
  (tenant, cid), ``status`` present/removed, never deleted (removal is a status).
- ``la_friend_request_log.task_id`` (nullable) with a unique key (task_id, account_id): an
  add_friend batch logs each account's sent request at most once, so replaying a flush is
  harmless (INSERT IGNORE). Rows from elsewhere keep task_id NULL (NULLs never collide).

Re-runnable: each table, column and index is created only if missing.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.schema_ops import create_index, create_table, has_column

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    create_table(
        "la_ipfs_pin",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("cid", sa.String(128), nullable=False),
        sa.Column("pin_type", sa.String(20), nullable=False, server_default="recursive"),
        sa.Column("size", sa.BigInteger),
        sa.Column("status", sa.String(20), nullable=False, server_default="present"),
        sa.Column("first_seen", sa.Integer, nullable=False),
        sa.Column("last_seen", sa.Integer, nullable=False),
        sa.Column("removed_time", sa.Integer),
        sa.Column("last_task_id", sa.Integer),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
        sa.UniqueConstraint("tenant_id", "cid", name="uq_pin_tenant_cid"),
        **_MYSQL,
    )
    create_index("idx_pin_tenant_status", "la_ipfs_pin", ["tenant_id", "status"])
    if not has_column("la_friend_request_log", "task_id"):
        with op.batch_alter_table("la_friend_request_log") as batch:
            batch.add_column(sa.Column("task_id", sa.Integer))
    create_index("uq_frl_task_account", "la_friend_request_log", ["task_id", "account_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_frl_task_account", table_name="la_friend_request_log")
    with op.batch_alter_table("la_friend_request_log") as batch:
        batch.drop_column("task_id")
    op.drop_index("idx_pin_tenant_status", table_name="la_ipfs_pin")
    op.drop_table("la_ipfs_pin")
