"""The admin panel's actions on both backends: queued INSERTs, cancel and soft delete at each stage,
the one-running-batch key (revision 0007), and how every closing path treats a cancel."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from batchcore.errors import BatchAlreadyActive, BatchCancelled
from batchcore.outcomes import ItemOutcome
from db import (
    claim_batch,
    counters,
    fail_stale_batches,
    find_active,
    finish_batch,
    get_batch,
    mark_failed_unowned,
    record_outcomes,
    recount,
    run_transaction,
)
from db.maintenance import key_holders, running_batches
from db.migrate import upgrade
from tests.db.helpers import new_batch, started_batch


def panel_insert(engine: Engine, tenant_id: int, task_type: str = "account_check") -> int:
    """The admin panel's unchanged INSERT of a pending row."""
    now = int(time.time())
    with engine.begin() as conn:
        result = conn.execute(
            text(
                "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data,"
                " create_admin_id, create_time, update_time)"
                " VALUES (:t, 'from panel', :type, 'pending', '{}', 1, :now, :now)"
            ),
            {"t": tenant_id, "type": task_type, "now": now},
        )
        return int(result.lastrowid)


def panel(engine: Engine, statement: str, batch_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(text(statement), {"id": batch_id, "now": int(time.time())})


CANCEL = "UPDATE la_batch_task SET task_status='cancelled', update_time=:now WHERE id=:id AND task_status IN ('pending','running')"
DELETE = "UPDATE la_batch_task SET delete_time=:now, update_time=:now WHERE id=:id"


def claim(engine: Engine, batch_id: int, owner: str = "run:1"):
    return run_transaction(engine, lambda s: claim_batch(s, batch_id, owner=owner, flow_run_id="fr-" + owner))


def status(engine: Engine, batch_id: int) -> tuple[str, str | None, int | None]:
    with Session(engine) as s:
        row = get_batch(s, batch_id)
        assert row is not None
        return row.task_status, row.error_message, row.end_time


def test_panel_insert_queues_behind_a_running_batch(engine: Engine) -> None:
    first = started_batch(engine, 3, tenant_id=7)
    second = panel_insert(engine, 7)  # no 1062: pending rows are not in the key
    third = panel_insert(engine, 7)
    with pytest.raises(BatchAlreadyActive) as info:
        claim(engine, second, "run:2")
    assert info.value.batch_id == first.batch_id
    assert status(engine, second)[0] == "pending"  # still queued, nothing written
    assert run_transaction(engine, key_holders) == {(7, "account_check"): first.batch_id}
    run_transaction(engine, lambda s: finish_batch(s, first.batch_id, first.fence, "completed"))
    claim(engine, second, "run:2")
    with pytest.raises(BatchAlreadyActive):
        claim(engine, third, "run:3")


def test_a_batch_started_by_tenant_id_is_refused_while_one_waits_or_runs(engine: Engine) -> None:
    queued = panel_insert(engine, 7)
    with pytest.raises(BatchAlreadyActive) as info:
        new_batch(engine, tenant_id=7)
    assert info.value.batch_id == queued
    panel(engine, DELETE, queued)  # a deleted pending row never runs: it blocks nothing
    assert run_transaction(engine, lambda s: find_active(s, 7, "account_check")) is None
    new_batch(engine, tenant_id=7)


def test_the_database_refuses_a_second_running_row(engine: Engine) -> None:
    started_batch(engine, 1, tenant_id=7)
    second = panel_insert(engine, 7)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE la_batch_task SET task_status='running', start_time=1 WHERE id=:id"), {"id": second})


@pytest.mark.parametrize("action", [CANCEL, DELETE], ids=["cancel", "soft-delete"])
def test_cancelled_or_deleted_before_the_claim_is_never_started(engine: Engine, action: str) -> None:
    batch_id = panel_insert(engine, 7)
    panel(engine, action, batch_id)
    with pytest.raises(BatchCancelled, match=f"batch {batch_id} was (cancelled|deleted) before it started"):
        claim(engine, batch_id)
    assert status(engine, batch_id)[2] is None
    assert run_transaction(engine, lambda s: recount(s, batch_id)).total == 0


@pytest.mark.parametrize("action", [CANCEL, DELETE], ids=["cancel", "soft-delete"])
def test_a_running_batch_holds_its_key_until_its_run_closes_it(engine: Engine, action: str) -> None:
    first = started_batch(engine, 4, tenant_id=7)
    run_transaction(engine, lambda s: record_outcomes(s, first.batch_id, first.fence, [ItemOutcome.success(1)]))
    panel(engine, action, first.batch_id)
    waiting = panel_insert(engine, 7)
    with pytest.raises(BatchAlreadyActive):
        claim(engine, waiting, "run:2")  # the first run may still be calling the platform
    assert [b for b, _, _ in run_transaction(engine, lambda s: running_batches(s, "fr-1"))] == [first.batch_id]
    # The run finishes what it asked for; the panel's cancel has the last word.
    run_transaction(engine, lambda s: finish_batch(s, first.batch_id, first.fence, "completed"))
    task_status, message, end_time = status(engine, first.batch_id)
    assert (task_status, message) == ("cancelled", "cancelled: 3 of 4 items not processed (their detail rows stay pending)")
    assert end_time is not None
    with Session(engine) as s:
        assert counters(s, first.batch_id) == recount(s, first.batch_id)
        assert recount(s, first.batch_id).pending == 3
    claim(engine, waiting, "run:2")


def test_reaper_closes_a_cancelled_batch_whose_run_is_gone_as_cancelled(engine: Engine) -> None:
    cancelled = started_batch(engine, 2, tenant_id=7)
    deleted = started_batch(engine, 2, tenant_id=8)
    plain = started_batch(engine, 2, tenant_id=9)
    panel(engine, CANCEL, cancelled.batch_id)
    panel(engine, DELETE, deleted.batch_id)
    now = int(time.time()) + 1000
    reaped = run_transaction(engine, lambda s: fail_stale_batches(s, now=now, stale_after_s=120, reason="no heartbeat"))
    assert sorted(reaped) == sorted([cancelled.batch_id, deleted.batch_id, plain.batch_id])
    note = "cancelled: 2 of 2 items not processed (their detail rows stay pending); no heartbeat"
    assert status(engine, cancelled.batch_id)[:2] == ("cancelled", note)
    assert status(engine, deleted.batch_id)[:2] == ("cancelled", note)
    assert status(engine, plain.batch_id)[:2] == ("failed", "no heartbeat")
    assert run_transaction(engine, key_holders) == {}
    again = started_batch(engine, 1, tenant_id=7)  # the key is free
    assert not run_transaction(engine, lambda s: mark_failed_unowned(s, cancelled.batch_id, None, "x"))
    assert again.batch_id > plain.batch_id


def test_a_cancelled_batch_that_ran_can_be_resumed(engine: Engine) -> None:
    first = started_batch(engine, 3, tenant_id=7)
    panel(engine, CANCEL, first.batch_id)
    run_transaction(engine, lambda s: finish_batch(s, first.batch_id, first.fence, "cancelled"))
    resumed = claim(engine, first.batch_id, "run:2")
    assert resumed.resumed and status(engine, first.batch_id)[0] == "running"


def test_0007_replaces_the_old_guard_and_can_be_rerun(any_db_url: str) -> None:
    """A soft-deleted batch still marked running beside a running one (the old guard allowed it):
    the older is failed as superseded, then the new key is built; the upgrade runs twice."""
    from db.engine import make_engine

    upgrade(any_db_url, "0005")
    engine = make_engine(any_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, start_time,"
                " create_admin_id, create_time, update_time, delete_time) VALUES"
                " (5, 'a', 'pin_sync', 'running', 1, 1, 1, 1, 2), (5, 'b', 'pin_sync', 'running', 1, 1, 1, 1, NULL),"
                " (5, 'c', 'pin_sync', 'cancelled', 1, 1, 1, 1, NULL)"
            ))
        upgrade(any_db_url)
        upgrade(any_db_url)
        with engine.begin() as conn:
            rows = conn.execute(text("SELECT id, task_status, end_time IS NULL, error_message FROM la_batch_task ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [
            (1, "failed", False, "superseded: duplicate running batch (migration)"),
            (2, "running", True, None),
            (3, "cancelled", False, None),  # its end_time set: it no longer holds the key
        ]
        queued = panel_insert(engine, 5, "pin_sync")
        with pytest.raises(BatchAlreadyActive):
            claim(engine, queued)
    finally:
        engine.dispose()
