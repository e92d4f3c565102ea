"""la_batch_run.notified_status: which ending of a batch has been notified (email, webhook).

Nullable; ``<status>@<end_time>`` of the last ending a notification was sent for, so the
runner's close, the flow-run hooks and the reaper send at most one per ending.

Revision ID: 0010
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("la_batch_run", sa.Column("notified_status", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("la_batch_run", "notified_status")
