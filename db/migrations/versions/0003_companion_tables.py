"""Our own tables: run ownership, accounts, friend request log.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
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
    op.create_table(
        "la_alt_account",
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
        **_MYSQL,
    )
    op.create_index("idx_account_tenant_status", "la_alt_account", ["tenant_id", "status"])
    op.create_table(
        "la_friend_request_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.Integer, nullable=False),
        sa.Column("friend_uid", sa.String(64), nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("create_time", sa.Integer, nullable=False),
        **_MYSQL,
    )
    op.create_index("idx_frl_account_day", "la_friend_request_log", ["account_id", "day"])


def downgrade() -> None:
    op.drop_table("la_friend_request_log")
    op.drop_table("la_alt_account")
    op.drop_table("la_batch_run")
