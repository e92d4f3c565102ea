"""Our own tables: run ownership, accounts (only where none exists), friend request log.

``la_alt_account`` is created only when the database has no table of that name: a real
installation's admin system has its own accounts table, which is adopted through the
``BATCH_ACCOUNT_*`` settings and never created, altered or dropped here. The index on it is
ours only on the table we created (same columns as ours). Re-runnable after a failure
half-way: each table and index is created only if missing.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.schema_ops import columns_of_table, create_index, create_table, has_table

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
ACCOUNTS = "la_alt_account"


def _account_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, nullable=False),
        sa.Column("platform_uid", sa.String(64), nullable=False),
        sa.Column("nickname", sa.String(255)),
        sa.Column("avatar_url", sa.String(1024)),
        sa.Column("access_token", sa.Text),
        sa.Column("refresh_token", sa.Text),
        sa.Column("token_expires_at", sa.Integer),
        sa.Column("token_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("status", sa.String(20), nullable=False, server_default="unknown"),
        sa.Column("last_check_time", sa.Integer),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
        sa.Column("delete_time", sa.Integer),
    ]


def owns_accounts_table() -> bool:
    """The accounts table is ours when it has exactly the columns we create."""
    return has_table(ACCOUNTS) and columns_of_table(ACCOUNTS) == {c.name for c in _account_columns()}


def upgrade() -> None:
    create_table(
        "la_batch_run",
        sa.Column(
            "task_id", sa.Integer, sa.ForeignKey("la_batch_task.id", ondelete="CASCADE"),
            primary_key=True, autoincrement=False,
        ),
        sa.Column("fence", sa.Integer, nullable=False, server_default="0"),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("owner", sa.String(255)),
        sa.Column("heartbeat_time", sa.Integer),
        sa.Column("create_time", sa.Integer, nullable=False),
        sa.Column("update_time", sa.Integer, nullable=False),
        **_MYSQL,
    )
    create_table(ACCOUNTS, *_account_columns(), **_MYSQL)  # a fresh installation: our default table
    if owns_accounts_table():
        create_index("idx_account_tenant_status", ACCOUNTS, ["tenant_id", "status"])
    create_table(
        "la_friend_request_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("friend_uid", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("create_time", sa.Integer, nullable=False),
        **_MYSQL,
    )
    create_index("idx_frl_account_day", "la_friend_request_log", ["account_id", "day"])


def downgrade() -> None:
    op.drop_table("la_friend_request_log")
    if owns_accounts_table():  # never the admin system's own accounts table
        op.drop_table(ACCOUNTS)
    op.drop_table("la_batch_run")
