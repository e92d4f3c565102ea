"""la_batch_run.notified_status: which ending of a batch has been notified (email, webhook).

Nullable; ``<status>@<end_time>`` of the last ending a notification was sent for, so the
runner's close, the flow-run hooks and the reaper send at most one per ending.

Revision ID: 0010
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.schema_ops import has_column

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if has_column("la_batch_run", "notified_status"):  # a re-run after a failure half-way
        return
    with op.batch_alter_table("la_batch_run") as batch:
        batch.add_column(sa.Column("notified_status", sa.String(64), nullable=True))


def downgrade() -> None:
    if not has_column("la_batch_run", "notified_status"):
        return
    with op.batch_alter_table("la_batch_run") as batch:
        batch.drop_column("notified_status")
