"""MirrorWriter on SQLite: what a flush records, when it flushes, and what it keeps when it cannot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from batchlib.mirror_writer import MirrorWriter
from batchlib.outcomes import ItemOutcome
from db import claim_batch, counters, run_transaction
from tests.db.helpers import detail_rows, started_batch

pytestmark = pytest.mark.unit


def run(coro):
    return asyncio.run(coro)


def sql(engine: Engine, query: str, **params) -> None:
    with engine.begin() as conn:
        conn.execute(text(query), params)


async def until(check, what: str, timeout: float = 10) -> None:
    """Poll ``check()`` (no timed assertion: the bound only stops a hung test)."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def test_close_records_every_buffered_outcome_and_the_counters(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 4)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence, interval=60)
    writer.add(ItemOutcome.success(1, nickname="a"))
    writer.add(ItemOutcome.failed(2, "account_banned (HTTP 403)"))
    writer.add(ItemOutcome.success(3))
    assert writer.pending == 3

    run(writer.close())

    rows = detail_rows(sqlite_engine, claim.batch_id)
    assert rows[1][0] == "success" and json.loads(rows[1][1]) == {"nickname": "a"}
    assert rows[2][:1] == ("failed",) and rows[2][2] == "account_banned (HTTP 403)"
    assert rows[3][0] == "success" and rows[4][0] == "pending"
    counts = run_transaction(sqlite_engine, lambda s: counters(s, claim.batch_id))
    assert (counts.total, counts.success, counts.failed, counts.processed) == (4, 2, 1, 3)
    assert writer.pending == 0 and writer.stats.recorded == 3 and writer.stats.moved == 3


def test_an_outcome_recorded_twice_counts_once(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 2)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    writer.add(ItemOutcome.success(1))
    run(writer.close())
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    writer.add(ItemOutcome.success(1))  # e.g. the same item answered again after a retry
    run(writer.close())
    counts = run_transaction(sqlite_engine, lambda s: counters(s, claim.batch_id))
    assert (counts.success, counts.processed) == (1, 1)
    assert writer.stats.moved == 0


def test_a_full_buffer_flushes_before_the_interval(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 10)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence, interval=3600, max_items=3)
    progress: list[int] = []
    writer.on_progress = progress.append

    async def scenario() -> None:
        flusher = asyncio.create_task(writer.run())
        for item_id in (1, 2, 3):
            writer.add(ItemOutcome.success(item_id))
        await until(lambda: writer.stats.flushes == 1, "a flush of the full buffer")
        writer.add(ItemOutcome.success(4))  # below max_items: waits for the interval or close()
        await asyncio.sleep(0.05)
        assert writer.pending == 1
        await writer.close()
        await flusher

    run(scenario())
    assert progress == [3, 1]
    assert [r[0] for _, r in sorted(detail_rows(sqlite_engine, claim.batch_id).items())][:5] == [
        "success", "success", "success", "success", "pending"
    ]


def test_a_taken_over_batch_is_stale_and_nothing_is_recorded(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 3)
    run_transaction(sqlite_engine, lambda s: claim_batch(s, claim.batch_id, owner="other:2", flow_run_id="fr-2",
                                                         takeover=True))
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    stale: list[bool] = []
    writer.on_stale = lambda: stale.append(True)
    writer.add(ItemOutcome.success(1))

    run(writer.close())

    assert writer.stale and stale == [True]
    assert detail_rows(sqlite_engine, claim.batch_id)[1][0] == "pending"


def test_a_cancel_from_the_panel_is_seen_by_the_next_check(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 3)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    cancels: list[bool] = []
    writer.on_cancel = lambda: cancels.append(True)
    run(writer.check())
    assert not writer.cancel_requested and cancels == []

    sql(sqlite_engine, "UPDATE la_batch_task SET task_status = 'cancelled' WHERE id = :b", b=claim.batch_id)
    run(writer.check())
    assert writer.cancel_requested and cancels == [True]


def test_a_soft_deleted_batch_counts_as_cancelled(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 1)
    sql(sqlite_engine, "UPDATE la_batch_task SET delete_time = 1 WHERE id = :b", b=claim.batch_id)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    run(writer.check())
    assert writer.cancel_requested


def test_a_failed_flush_keeps_its_outcomes_for_the_next(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 3)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    writer.add(ItemOutcome.success(1))
    writer.add(ItemOutcome.failed(2, "timeout"))
    sql(sqlite_engine, "ALTER TABLE la_batch_task_detail RENAME TO detail_away")  # the flush cannot write

    run(writer.check())
    assert writer.error is not None and writer.error_since is not None
    assert writer.pending == 2  # kept, in their order, for the next flush

    sql(sqlite_engine, "ALTER TABLE detail_away RENAME TO la_batch_task_detail")
    writer.add(ItemOutcome.success(3))
    run(writer.close())
    assert writer.error is None and writer.pending == 0
    assert [r[0] for _, r in sorted(detail_rows(sqlite_engine, claim.batch_id).items())] == [
        "success", "failed", "success"
    ]


def test_the_batch_types_side_effects_share_the_flush_transaction(sqlite_engine: Engine) -> None:
    """``apply`` runs in the flush's transaction: when it fails nothing of the flush is committed."""
    claim = started_batch(sqlite_engine, 2)
    seen: list[list[int]] = []

    def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int) -> None:
        seen.append([o.item_id for o in outcomes])
        if len(seen) == 1:
            raise RuntimeError("side effect failed")

    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence, apply=apply)
    writer.add(ItemOutcome.success(1))
    run(writer.check())
    assert writer.error is not None and writer.pending == 1
    assert detail_rows(sqlite_engine, claim.batch_id)[1][0] == "pending"  # rolled back with apply

    run(writer.close())
    assert seen == [[1], [1]] and detail_rows(sqlite_engine, claim.batch_id)[1][0] == "success"


def test_a_heartbeat_without_outcomes_touches_the_run_row(sqlite_engine: Engine) -> None:
    claim = started_batch(sqlite_engine, 1)
    sql(sqlite_engine, "UPDATE la_batch_run SET heartbeat_time = 1 WHERE task_id = :b", b=claim.batch_id)
    writer = MirrorWriter(sqlite_engine, claim.batch_id, claim.fence)
    run(writer.check())
    with sqlite_engine.connect() as conn:
        beat = conn.execute(text("SELECT heartbeat_time FROM la_batch_run WHERE task_id = :b"),
                            {"b": claim.batch_id}).scalar_one()
    assert beat > 1 and writer.stats.flushes == 1 and writer.stats.recorded == 0
