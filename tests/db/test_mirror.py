"""The mirror repository on both backends: lifecycle, idempotence, fence, one-active guard."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session

from batchcore.errors import BatchAlreadyActive, BatchNotClaimable, StaleFence, UnknownBatch
from batchcore.outcomes import ItemOutcome
from db import (
    Counts,
    Moved,
    active_accounts_query,
    add_details,
    add_details_from,
    check_fence,
    claim_batch,
    counters,
    create_batch,
    find_active,
    finish_batch,
    get_batch,
    heartbeat,
    pending_items,
    record_outcomes,
    recount,
    run_transaction,
    set_total,
    upsert_accounts,
)
from db._util import RUN, dumps
from tests.db.helpers import detail_rows, new_batch, started_batch


def test_happy_path(engine: Engine) -> None:
    batch_id = new_batch(engine, task_data={"account_ids": [1, 2, 3, 4]}, now=1000)

    def start(s: Session) -> tuple[int, int]:
        claim = claim_batch(s, batch_id, owner="host:1", flow_run_id="fr", now=1001)
        assert (claim.fence, claim.tenant_id, claim.resumed) == (1, 1, False)
        assert claim.task_data == {"account_ids": [1, 2, 3, 4]}
        first = add_details(s, batch_id, claim.fence, [(i, {"n": "名"}) for i in (1, 2, 3)], now=1001)
        again = add_details(s, batch_id, claim.fence, [(i, None) for i in (2, 3, 4)], now=1001)
        return first, again

    assert run_transaction(engine, start) == (3, 1)
    with Session(engine) as s, s.begin():
        assert set_total(s, batch_id, 1) == 4
        assert pending_items(s, batch_id, limit=2) == [(1, {"n": "名"}), (2, {"n": "名"})]
        assert pending_items(s, batch_id, after_item_id=2) == [(3, {"n": "名"}), (4, None)]
        outcomes = [
            ItemOutcome.success(1, nickname="新"),
            ItemOutcome.failed(2, "banned"),
            ItemOutcome(3, "skipped"),
        ]
        assert record_outcomes(s, batch_id, 1, outcomes, now=1002) == Moved(1, 1, 1)
        assert counters(s, batch_id) == recount(s, batch_id) == Counts(4, 1, 1, 1, 1)
        record_outcomes(s, batch_id, 1, [ItemOutcome.success(4)], now=1003)
        assert finish_batch(s, batch_id, 1, "completed", now=1004).processed == 4
    rows = detail_rows(engine, batch_id)
    assert rows[1] == ("success", '{"nickname":"新"}', None, 1002)
    assert rows[2] == ("failed", None, "banned", 1002)
    assert rows[3][0] == "skipped"
    with Session(engine) as s:
        batch = get_batch(s, batch_id)
        assert batch is not None
        assert (batch.task_status, batch.start_time, batch.end_time) == ("completed", 1001, 1004)
        assert (batch.total_count, batch.processed_count, batch.success_count, batch.failed_count) == (4, 4, 2, 1)
        assert find_active(s, 1, "account_check") is None


def test_recording_twice_changes_nothing(engine: Engine) -> None:
    claim = started_batch(engine, 10)
    outcomes = [ItemOutcome.success(i, v=i) if i % 3 else ItemOutcome.failed(i, "x") for i in range(1, 8)]
    first = run_transaction(engine, lambda s: record_outcomes(s, claim.batch_id, claim.fence, outcomes, now=50))
    before = detail_rows(engine, claim.batch_id)
    flipped = [ItemOutcome.failed(o.item_id, "late") for o in outcomes]
    second = run_transaction(engine, lambda s: record_outcomes(s, claim.batch_id, claim.fence, flipped, now=60))
    assert first == Moved(success=5, failed=2) and second == Moved()
    assert detail_rows(engine, claim.batch_id) == before
    with Session(engine) as s:
        assert counters(s, claim.batch_id) == recount(s, claim.batch_id) == Counts(10, 3, 5, 2, 0)


def test_fence_check_counts_matched_rows(engine: Engine) -> None:
    """Same-second heartbeats change nothing; MySQL must still report the row (FOUND_ROWS)."""
    claim = started_batch(engine, 1)
    with Session(engine) as s, s.begin():
        check_fence(s, claim.batch_id, claim.fence, now=77)
        check_fence(s, claim.batch_id, claim.fence, now=77)
        heartbeat(s, claim.batch_id, claim.fence, now=77)


def test_stale_fence_writes_nothing(engine: Engine) -> None:
    claim = started_batch(engine, 5)
    with Session(engine) as s, s.begin():
        with pytest.raises(BatchNotClaimable):
            claim_batch(s, claim.batch_id, owner="other:2", flow_run_id=None)
        second = claim_batch(s, claim.batch_id, owner="other:2", flow_run_id="fr-2", takeover=True)
    assert (second.fence, second.resumed) == (2, True)
    before = detail_rows(engine, claim.batch_id)
    outcomes = [ItemOutcome.success(1)]
    with pytest.raises(StaleFence):
        run_transaction(engine, lambda s: record_outcomes(s, claim.batch_id, claim.fence, outcomes))
    with pytest.raises(StaleFence):
        run_transaction(engine, lambda s: finish_batch(s, claim.batch_id, claim.fence, "completed"))
    assert detail_rows(engine, claim.batch_id) == before
    with Session(engine) as s:
        assert counters(s, claim.batch_id).processed == 0
        assert s.execute(select(RUN.c.owner).where(RUN.c.task_id == claim.batch_id)).scalar() == "other:2"


def test_claim_rules(engine: Engine) -> None:
    with Session(engine) as s, s.begin(), pytest.raises(UnknownBatch):
        claim_batch(s, 999, owner="a", flow_run_id=None)
    claim = started_batch(engine, 2)
    run_transaction(engine, lambda s: finish_batch(s, claim.batch_id, claim.fence, "completed"))
    with Session(engine) as s, s.begin(), pytest.raises(BatchNotClaimable):
        claim_batch(s, claim.batch_id, owner="a", flow_run_id=None, takeover=True)
    with Session(engine) as s, s.begin(), pytest.raises(BatchNotClaimable):
        finish_batch(s, claim.batch_id, claim.fence, "failed")


def test_one_active_batch_per_tenant_and_type(engine: Engine) -> None:
    first = new_batch(engine, tenant_id=7, task_type="add_friend")
    with Session(engine) as s, s.begin():
        with pytest.raises(BatchAlreadyActive) as info:
            create_batch(s, tenant_id=7, task_type="add_friend", task_name="b", create_admin_id=1, task_data=None)
        assert info.value.batch_id == first
        assert s.execute(text("SELECT COUNT(*) FROM la_batch_task")).scalar() == 1  # still usable
    other_tenant = new_batch(engine, tenant_id=8, task_type="add_friend")
    new_batch(engine, tenant_id=7, task_type="pin_sync")
    fence = run_transaction(engine, lambda s: claim_batch(s, first, owner="a", flow_run_id=None).fence)
    run_transaction(engine, lambda s: finish_batch(s, first, fence, "failed", "boom " * 1000))
    with Session(engine) as s:
        batch = get_batch(s, first)
        assert batch is not None and batch.error_message is not None and len(batch.error_message) == 2000
    replacement = new_batch(engine, tenant_id=7, task_type="add_friend")  # the slot is free again
    assert replacement > other_tenant
    run_transaction(engine, lambda s: claim_batch(s, replacement, owner="a", flow_run_id=None))
    with Session(engine) as s, s.begin(), pytest.raises(BatchAlreadyActive) as info:
        claim_batch(s, first, owner="b", flow_run_id=None)  # resuming the failed one collides
    assert info.value.batch_id == replacement


def test_statements_per_record_call(engine: Engine) -> None:
    claim = started_batch(engine, 1200)
    statements: list[str] = []

    def count(conn, cursor, statement, params, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if not statement.startswith("BEGIN"):
            statements.append(statement)

    outcomes = [
        ItemOutcome.success(i, ok=True) if i % 10 else ItemOutcome.failed(i, "nope") for i in range(1, 1001)
    ]
    event.listen(engine, "before_cursor_execute", count)
    try:
        with Session(engine) as s, s.begin():
            statements.clear()
            moved = record_outcomes(s, claim.batch_id, claim.fence, outcomes[:500])
            per_500 = len(statements)
            statements.clear()
            record_outcomes(s, claim.batch_id, claim.fence, outcomes[500:])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert moved == Moved(success=450, failed=50)
    # fence check + success UPDATE + failed UPDATE + counters (BEGIN excluded)
    assert per_500 <= 4, statements


def test_detail_rows_inserted_from_a_query_of_the_accounts_table(engine: Engine) -> None:
    """A whole-tenant check's rows come from ``INSERT ... SELECT``: the tenant's usable accounts
    (not banned or disabled, not deleted), none of another tenant, existing rows kept; fenced."""
    account = {"platform_uid": "u", "access_token": "a", "refresh_token": "r"}
    rows = [
        {"id": 501, "tenant_id": 5, "status": "alive"}, {"id": 502, "tenant_id": 5, "status": "banned"},
        {"id": 503, "tenant_id": 5, "status": "disabled"}, {"id": 504, "tenant_id": 5, "status": "unknown"},
        {"id": 505, "tenant_id": 5, "status": "alive", "delete_time": 99}, {"id": 601, "tenant_id": 6, "status": "alive"},
    ]
    run_transaction(engine, lambda s: upsert_accounts(s, [{**account, **r, "platform_uid": f"u{r['id']}"} for r in rows]))
    batch_id = new_batch(engine, tenant_id=5, task_data=None)

    def start(s: Session) -> tuple[int, int]:
        claim = claim_batch(s, batch_id, owner="host:1", flow_run_id="fr", now=1001)
        add_details(s, batch_id, claim.fence, [(504, {"kept": True})], now=1001)
        return claim.fence, add_details_from(s, batch_id, claim.fence, active_accounts_query(5), now=1002)

    fence, inserted = run_transaction(engine, start)
    assert inserted == 1
    with Session(engine) as s:
        assert pending_items(s, batch_id) == [(501, None), (504, {"kept": True})]
    with pytest.raises(StaleFence):
        run_transaction(engine, lambda s: add_details_from(s, batch_id, fence + 1, active_accounts_query(6)))
    assert sorted(detail_rows(engine, batch_id)) == [501, 504]


def test_outcome_texts_reach_the_rows_as_given(engine: Engine) -> None:
    """Results and errors go through the driver's placeholders: quotes, % and ? are data."""
    claim = started_batch(engine, 4)
    note = "100% 'quoted' \"twice\" ? %s"
    outcomes = [
        ItemOutcome.success(1, note=note), ItemOutcome.failed(2, "50% off; it's %s ? broken"),
        ItemOutcome(3, "skipped"), ItemOutcome.failed(4, "plain", code=7),
    ]
    moved = run_transaction(engine, lambda s: record_outcomes(s, claim.batch_id, claim.fence, outcomes, now=1002))
    assert moved == Moved(1, 2, 1)
    rows = detail_rows(engine, claim.batch_id)
    assert rows[1] == ("success", dumps({"note": note}), None, 1002)
    assert rows[2] == ("failed", None, "50% off; it's %s ? broken", 1002)
    assert rows[3] == ("skipped", None, None, 1002)
    assert rows[4] == ("failed", '{"code":7}', "plain", 1002)
    again = run_transaction(engine, lambda s: record_outcomes(s, claim.batch_id, claim.fence, outcomes, now=1003))
    assert again == Moved(0, 0, 0) and detail_rows(engine, claim.batch_id) == rows  # only pending rows move
