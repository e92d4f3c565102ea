"""Reaper, pruning and dispatch queries."""

from __future__ import annotations

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from db import (
    counters,
    fail_stale_batches,
    finish_batch,
    get_batch,
    heartbeat,
    mark_failed_unowned,
    pending_batches,
    prune_finished,
    record_outcomes,
    recount,
    run_transaction,
)
from db._util import DETAIL, RUN, TASK
from tests.db.helpers import new_batch, started_batch


def test_fail_stale_batches_only_touches_stale_ones(engine: Engine) -> None:
    stale = started_batch(engine, 3, tenant_id=1)
    fresh = started_batch(engine, 3, tenant_id=2)
    pending = new_batch(engine, tenant_id=3)
    now = 10_000_000_000 // 10  # far after the claims' real clock
    with Session(engine) as s, s.begin():
        record_outcomes(s, stale.batch_id, stale.fence, [ItemOutcome.success(1)], now=now - 500)
        heartbeat(s, fresh.batch_id, fresh.fence, now=now - 10)
    failed = run_transaction(engine, lambda s: fail_stale_batches(s, now=now, stale_after_s=120, reason="reaped"))
    assert failed == [stale.batch_id]
    with Session(engine) as s:
        batch = get_batch(s, stale.batch_id)
        assert batch is not None and (batch.task_status, batch.error_message, batch.end_time) == ("failed", "reaped", now)
        assert counters(s, stale.batch_id) == recount(s, stale.batch_id)
        assert s.scalar(select(RUN.c.fence).where(RUN.c.task_id == stale.batch_id)) == stale.fence + 1
        assert [get_batch(s, i).task_status for i in (fresh.batch_id, pending)] == ["running", "pending"]  # type: ignore[union-attr]


def test_mark_failed_unowned_respects_fence(engine: Engine) -> None:
    claim = started_batch(engine, 2)
    assert not run_transaction(engine, lambda s: mark_failed_unowned(s, claim.batch_id, claim.fence + 5, "gone"))
    assert run_transaction(engine, lambda s: mark_failed_unowned(s, claim.batch_id, claim.fence, "gone"))
    with Session(engine) as s:
        assert get_batch(s, claim.batch_id).task_status == "failed"  # type: ignore[union-attr]


def test_prune_removes_only_old_finished_batches(engine: Engine) -> None:
    old = started_batch(engine, 4, tenant_id=1)
    recent = started_batch(engine, 4, tenant_id=2)
    running = started_batch(engine, 4, tenant_id=3)
    run_transaction(engine, lambda s: finish_batch(s, old.batch_id, old.fence, "completed", now=1000))
    run_transaction(engine, lambda s: finish_batch(s, recent.batch_id, recent.fence, "cancelled", now=9000))
    assert run_transaction(engine, lambda s: prune_finished(s, before=5000, limit=10, hard=False, now=6000)) == 1
    with Session(engine) as s:
        assert get_batch(s, old.batch_id).delete_time == 6000  # type: ignore[union-attr]
    assert run_transaction(engine, lambda s: prune_finished(s, before=5000, limit=10, hard=False)) == 0
    assert run_transaction(engine, lambda s: prune_finished(s, before=5000, limit=10, hard=True)) == 1
    with Session(engine) as s:
        ids = set(s.scalars(select(TASK.c.id)))
        per_task = dict(s.execute(select(DETAIL.c.task_id, func.count()).group_by(DETAIL.c.task_id)).all())
        assert ids == {recent.batch_id, running.batch_id}
        assert per_task == {recent.batch_id: 4, running.batch_id: 4}
        assert s.scalar(select(func.count()).select_from(RUN).where(RUN.c.task_id == old.batch_id)) == 0


def test_pending_batches_in_id_order(engine: Engine) -> None:
    ids = [new_batch(engine, tenant_id=t) for t in (3, 1, 2)]
    started_batch(engine, 1, tenant_id=4)
    with Session(engine) as s:
        assert [b.id for b in pending_batches(s, 2)] == ids[:2]


def test_auto_resume_is_reserved_once_per_attempt_and_bounded(engine: Engine) -> None:
    from db.maintenance import record_resume, reserve_auto_resumes, resume_lost, resumes_to_start

    claim = started_batch(engine, 3)
    reserve = lambda: run_transaction(  # noqa: E731
        engine, lambda s: reserve_auto_resumes(s, max_attempts=2, window_s=600)
    )
    assert reserve() == ([], [])  # nothing reaped yet
    assert run_transaction(engine, lambda s: mark_failed_unowned(s, claim.batch_id, claim.fence, "run gone; resume: x"))
    (first,), gave_up = reserve()
    assert (first.batch_id, first.attempt, first.flow_run_id, gave_up) == (claim.batch_id, 1, None, [])
    assert reserve() == ([], [])  # an overlapping maintenance run reserves nothing more
    with Session(engine) as s:
        assert get_batch(s, claim.batch_id).error_message == "auto-resume 1/2 after: run gone"  # type: ignore[union-attr]
    assert run_transaction(engine, lambda s: record_resume(s, claim.batch_id, 1, "fr-resume-1"))
    (noted,) = run_transaction(engine, resumes_to_start)
    assert (noted.attempt, noted.flow_run_id) == (1, "fr-resume-1")

    # The resume run died before claiming: attempt 2, then no more.
    assert run_transaction(engine, lambda s: resume_lost(s, noted, "resume run crashed"))
    assert not run_transaction(engine, lambda s: resume_lost(s, noted, "again"))  # compare-and-set
    (second,), _ = reserve()
    assert second.attempt == 2
    assert run_transaction(engine, lambda s: resume_lost(s, second, "resume run crashed again"))
    assert reserve() == ([], [claim.batch_id])
    assert reserve() == ([], [])
    with Session(engine) as s:
        batch = get_batch(s, claim.batch_id)
        assert batch.task_status == "failed" and batch.error_message.startswith("no automatic resume left (2/2")  # type: ignore[union-attr]
        assert s.scalar(select(RUN.c.auto_resumes).where(RUN.c.task_id == claim.batch_id)) == 2


def test_resumed_batch_keeps_its_note_and_old_reaps_are_not_resumed(engine: Engine) -> None:
    from db import claim_batch
    from db.maintenance import reserve_auto_resumes

    claim = started_batch(engine, 2, tenant_id=1)
    old = started_batch(engine, 2, tenant_id=2)
    assert run_transaction(engine, lambda s: mark_failed_unowned(s, claim.batch_id, claim.fence, "gone"))
    assert run_transaction(engine, lambda s: mark_failed_unowned(s, old.batch_id, old.fence, "gone", now=1000))
    (resume,), _ = run_transaction(engine, lambda s: reserve_auto_resumes(s, max_attempts=3, window_s=600))
    assert resume.batch_id == claim.batch_id  # the one reaped long ago stays failed
    again = run_transaction(engine, lambda s: claim_batch(s, claim.batch_id, owner="resume", flow_run_id="fr-2"))
    assert again.fence == claim.fence + 2  # the reaper's bump, then this claim: the old owner is fenced out
    with Session(engine) as s:
        assert get_batch(s, claim.batch_id).error_message == "auto-resume 1/3 after: gone"  # type: ignore[union-attr]
    run_transaction(engine, lambda s: finish_batch(s, claim.batch_id, again.fence, "completed"))
    with Session(engine) as s:
        batch = get_batch(s, claim.batch_id)
        assert (batch.task_status, batch.error_message) == ("completed", "auto-resume 1/3 after: gone")  # type: ignore[union-attr]
