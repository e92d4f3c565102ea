"""How many times the maintenance flow resumed a batch by itself after its run died.

``la_batch_run.auto_resumes`` (NOT NULL, default 0): the attempt number of the latest
automatic resume. The reaper bumps it under the run row lock when it fails a dead run's
batch and starts a resume run; it never passes ``BATCH_AUTO_RESUME_MAX``. The admin
panel's tables are not touched.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from db.schema_ops import has_column

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if has_column("la_batch_run", "auto_resumes"):  # a re-run after a failure half-way
        return
    with op.batch_alter_table("la_batch_run") as batch:
        batch.add_column(sa.Column("auto_resumes", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    if not has_column("la_batch_run", "auto_resumes"):
        return
    with op.batch_alter_table("la_batch_run") as batch:
        batch.drop_column("auto_resumes")
