"""One *running* batch per (tenant, type); pending rows queue (the admin panel's INSERT always succeeds).

Revision 0004's guard covered ``pending`` rows and ignored soft-deleted ones, so the panel's
INSERT of a second batch of a busy (tenant, type) failed with error 1062, and a soft-deleted
batch that still ran let a second one start beside it. The new guard covers the rows whose run
may still make platform calls: ``running`` (deleted or not), and ``cancelled`` rows a run
started and has not closed yet (``start_time`` set, ``end_time`` NULL).

- MariaDB/MySQL: the VIRTUAL generated column ``active_key`` and ``uq_task_active`` are
  replaced by ``run_key`` and ``UNIQUE KEY uq_task_running (run_key)``, in one ALTER.
- SQLite: the partial unique index ``uq_task_active`` is replaced by ``uq_task_running``.

Rows that would collide under the new key (a soft-deleted batch still marked running beside a
newer one) are closed first, keeping the newest running one: other running ones are
``failed`` as superseded, cancelled ones get their ``end_time``. Every step checks what exists, so a run that stopped half-way can be
re-run.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HOLDS_SQL = (
    "(task_status = 'running'"
    " OR (task_status = 'cancelled' AND start_time IS NOT NULL AND end_time IS NULL))"
)
OLD_ACTIVE_SQL = "task_status IN ('pending','running') AND delete_time IS NULL"
SUPERSEDED = "superseded: duplicate running batch (migration)"
QUEUE_DROPPED = "superseded: queued behind another batch when the queue was removed (migration downgrade)"
log = logging.getLogger("alembic.runtime.migration")


def _older_duplicates(where: str, keep_first: str) -> list[tuple[int, str]]:
    """(id, status) of every row matching ``where`` but the first of its (tenant, type) in ``keep_first`` order."""
    rows = op.get_bind().execute(
        sa.text(
            f"SELECT id, tenant_id, task_type, task_status FROM la_batch_task WHERE {where} "
            f"ORDER BY tenant_id, task_type, {keep_first}"
        )
    ).all()
    seen: set[tuple[int, str]] = set()
    older = []
    for row_id, tenant_id, task_type, status in rows:
        if (tenant_id, task_type) in seen:
            older.append((int(row_id), str(status)))
        seen.add((tenant_id, task_type))
    return older


def _close(ids: list[int], failed_with: str | None = None) -> None:
    """Set end_time on these rows; with ``failed_with``, also fail them with that message."""
    now = int(time.time())
    fail = "task_status = 'failed', error_message = :msg, " if failed_with else ""
    for start in range(0, len(ids), 500):
        op.get_bind().execute(
            sa.text(f"UPDATE la_batch_task SET {fail}end_time = COALESCE(end_time, :now), update_time = :now"
                    " WHERE id IN :ids").bindparams(sa.bindparam("ids", expanding=True)),
            {"now": now, "ids": ids[start : start + 500], "msg": failed_with},
        )


def _release_older_holders() -> None:
    older = _older_duplicates(HOLDS_SQL, "task_status = 'running' DESC, id DESC")  # the newest running one keeps it
    _close([i for i, status in older if status == "running"], failed_with=SUPERSEDED)
    _close([i for i, status in older if status != "running"])
    if older:
        log.warning("closed %d older duplicate running batches: %s", len(older), [i for i, _ in older][:20])


def _mysql_state() -> tuple[set[str], set[str]]:
    insp = sa.inspect(op.get_bind())
    columns = {c["name"] for c in insp.get_columns("la_batch_task")}
    indexes = {i["name"] for i in insp.get_indexes("la_batch_task")}
    return columns, indexes


def _swap(drop: tuple[str, str], add: tuple[str, str, str]) -> None:
    """Replace one guard by another: on MariaDB the (column, key) pair in one ALTER (atomic),
    on SQLite the partial index. Whatever is already done is skipped."""
    old_column, old_key = drop
    new_column, new_key, condition = add
    if op.get_bind().dialect.name == "sqlite":
        op.execute(f"DROP INDEX IF EXISTS {old_key}")
        op.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {new_key} ON la_batch_task (tenant_id, task_type) WHERE {condition}"
        )
        return
    columns, indexes = _mysql_state()
    parts = []
    if old_key in indexes:
        parts.append(f"DROP INDEX {old_key}")
    if old_column in columns:
        parts.append(f"DROP COLUMN {old_column}")
    if new_column not in columns:
        parts.append(
            f"ADD COLUMN {new_column} varchar(64) AS "
            f"(IF({condition}, CONCAT(tenant_id, ':', task_type), NULL)) VIRTUAL"
        )
    if new_key not in indexes:
        parts.append(f"ADD UNIQUE KEY {new_key} ({new_column})")
    if parts:
        op.execute("ALTER TABLE la_batch_task " + ", ".join(parts))


def upgrade() -> None:
    _release_older_holders()
    _swap(("active_key", "uq_task_active"), ("run_key", "uq_task_running", HOLDS_SQL))


def downgrade() -> None:
    # The old guard allows one pending-or-running row per key: queued rows beyond it are failed.
    # The running one (else the oldest pending one: the head of the queue) keeps the key.
    older = _older_duplicates(OLD_ACTIVE_SQL, "task_status = 'running' DESC, id")
    _close([i for i, _ in older], failed_with=QUEUE_DROPPED)
    _swap(("run_key", "uq_task_running"), ("active_key", "uq_task_active", OLD_ACTIVE_SQL))
