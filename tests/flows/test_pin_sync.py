"""pin-sync under Prefect against the Kubo stand-in: 10,000 pins, vanishing pins, a node that
goes away mid-stream, cancel and resume, bad input."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import event

from batchlib.handlers.pin_sync import cid_key
from flows.pin_sync import pin_sync
from simulators.kubo import KuboSimulator
from tests.support.batch_env import BatchEnv, items_of


def run(coro):
    return asyncio.run(coro)


def pins(env: BatchEnv, tenant_id: int = 7) -> dict[str, tuple[str, int | None, int]]:
    rows = env.sql("SELECT cid, status, size, first_seen FROM la_ipfs_pin WHERE tenant_id = :t", t=tenant_id)
    return {r.cid: (r.status, r.size, r.first_seen) for r in rows}


def old_pin(env: BatchEnv, cid: str, tenant_id: int = 7) -> None:
    """A pin an earlier sync saw (present), long ago."""
    env.sql("INSERT INTO la_ipfs_pin (tenant_id, cid, pin_type, size, status, first_seen, last_seen,"
            " create_time, update_time) VALUES (:t, :cid, 'recursive', 1, 'present', 100, 100, 100, 100)",
            t=tenant_id, cid=cid)


def test_ten_thousand_pins_with_vanishing_ones(batch_env: BatchEnv, kubo: KuboSimulator, configure) -> None:
    configure(concurrency=50)
    batch_env.seed({7: 1, 8: 1})
    kubo.configure(pins=10_000, vanish_fraction=0.01)
    old_pin(batch_env, "bafyoldpinnolongeronthenode")
    old_pin(batch_env, "bafyoldpinofanothertenant", tenant_id=8)
    statements = []
    listener = lambda *args: statements.append(1)  # noqa: E731
    event.listen(batch_env.engine, "before_cursor_execute", listener)
    started = time.monotonic()
    try:
        state = run(pin_sync(tenant_id=7, return_state=True))
    finally:
        elapsed = time.monotonic() - started
        event.remove(batch_env.engine, "before_cursor_execute", listener)

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    batch_env.assert_consistent(batch_id)
    vanished = set(kubo.vanished())
    assert 50 < len(vanished) < 200
    row = batch_env.batch(batch_id)
    assert (row["total_count"], row["success_count"], row["failed_count"]) == (10_000, 10_000 - len(vanished), len(vanished))
    assert row["error_message"].startswith(f"{len(vanished)} pin(s) failed; first 10: ")
    assert row["error_message"].count("not pinned") == 10
    got = items_of(batch_env, batch_id)
    assert set(got) == {cid_key(c) for c in kubo.pins()} or len(got) == 10_000  # probing only on collisions
    failed = [json.loads(r) for s, r, _ in got.values() if s == "failed"]
    assert {f["cid"] for f in failed} == vanished and all(f["vanished"] for f in failed)
    table = pins(batch_env)
    present = {c for c, (s, _, _) in table.items() if s == "present"}
    assert present == set(kubo.pins()) - vanished
    assert all(table[c][1] and table[c][1] > 0 for c in present)
    assert table["bafyoldpinnolongeronthenode"][0] == "removed"
    assert pins(batch_env, 8)["bafyoldpinofanothertenant"][0] == "present"  # other tenants untouched
    assert kubo.calls()["by_endpoint"]["files/stat"] == 10_000  # I6: one stat per pin
    print(f"\npin_sync 10,000 pins: {elapsed:.1f}s, {len(statements)} SQL statements")
    assert len(statements) < 1000  # set-based: a handful per flush, not one per pin

    # The node changes: 5 pins removed, 3 added; a second sync follows.
    gone = kubo.pins()[:5]
    kubo.remove(gone)
    added = kubo.add(3)
    kubo.configure(vanish_fraction=0.0)
    first_seen = table[kubo.pins()[10]][2]
    assert run(pin_sync(tenant_id=7, return_state=True)).is_completed()
    table = pins(batch_env)
    assert all(table[c][0] == "removed" for c in gone)
    assert all(table[c][0] == "present" for c in added)
    assert all(table[c][0] == "present" for c in vanished if c in kubo.pins())  # back once stat works
    assert table[kubo.pins()[10]][2] == first_seen
    assert sum(1 for s, _, _ in table.values() if s == "present") == len(kubo.pins())


def test_node_going_away_mid_stream_fails_the_batch_and_a_resume_lists_again(
    batch_env: BatchEnv, kubo: KuboSimulator
) -> None:
    batch_env.seed({7: 1})
    old_pin(batch_env, "bafyoldpinnolongeronthenode")
    kubo.configure(die_after_lines=40)

    state = run(pin_sync(tenant_id=7, return_state=True))

    assert state.is_failed()
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed" and row["total_count"] == 0
    assert "could not collect the items: kubo stream ended early after 40 pins" in row["error_message"]
    assert kubo.calls()["by_endpoint"]["pin/ls"] == 4  # listed again from the start, within the budget
    assert kubo.calls()["by_endpoint"].get("files/stat", 0) == 0
    assert pins(batch_env) == {"bafyoldpinnolongeronthenode": ("present", 1, 100)}  # nothing removed

    kubo.configure(die_after_lines=None)
    resumed = run(pin_sync(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    batch_env.assert_consistent(batch_id)
    assert batch_env.batch(batch_id)["success_count"] == 100
    assert pins(batch_env)["bafyoldpinnolongeronthenode"][0] == "removed"


def test_stat_errors_keep_their_reason_and_the_pin_stays_present(batch_env: BatchEnv, kubo: KuboSimulator) -> None:
    batch_env.seed({7: 1})
    kubo.configure(pins=30, stat_fail_first=4)  # every stat fails past the client's 1 + 3 attempts
    known = kubo.pins()[0]
    old_pin(batch_env, known)

    state = run(pin_sync(tenant_id=7, return_state=True))

    assert state.is_completed()
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    assert batch_env.batch(batch_id)["failed_count"] == 30
    reasons = [e for s, _, e in items_of(batch_env, batch_id).values()]
    assert all("files/stat unavailable after 4 attempt(s)" in e for e in reasons)
    table = pins(batch_env)
    assert table[known] == ("present", 1, 100)  # listed, so present; size kept
    assert len(table) == 30 and all(s == "present" for s, _, _ in table.values())
    assert batch_env.batch(batch_id)["error_message"].startswith("30 pin(s) failed; first 10: ")


def test_cancel_then_resume_stats_each_pin_once(batch_env: BatchEnv, kubo: KuboSimulator, configure) -> None:
    configure(concurrency=4)
    batch_env.seed({7: 1})
    kubo.configure(pins=300, latency_ms=30)
    old_pin(batch_env, "bafyoldpinnolongeronthenode")

    batch_id, state = batch_env.cancel_from_panel(pin_sync(tenant_id=7, return_state=True), after=20)
    assert state.is_cancelled(), state.message
    batch_env.assert_consistent(batch_id)
    assert pins(batch_env)["bafyoldpinnolongeronthenode"][0] == "present"  # incomplete: nothing removed

    resumed = run(pin_sync(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    batch_env.assert_consistent(batch_id)
    assert batch_env.batch(batch_id)["success_count"] == 300
    assert kubo.calls()["by_endpoint"]["pin/ls"] == 1  # the resume did not list again
    per_cid = kubo.calls()["stat_by_cid"]
    assert len(per_cid) == 300 and sum(1 for n in per_cid.values() if n > 1) <= 4
    assert pins(batch_env)["bafyoldpinnolongeronthenode"][0] == "removed"


@pytest.mark.parametrize(
    ("params", "message"),
    [({"tenant_id": 99}, "unknown tenant 99"), ({"tenant_id": 7, "batch_id": 5}, "batch 5 does not exist")],
)
def test_bad_input_is_refused_and_writes_nothing(batch_env: BatchEnv, kubo: KuboSimulator, params, message) -> None:
    batch_env.seed({7: 1})

    state = run(pin_sync(**params, return_state=True))

    assert state.is_failed() and message in state.message
    assert batch_env.sql("SELECT id FROM la_batch_task") == []


def test_admin_panel_row_with_task_data_is_marked_failed(batch_env: BatchEnv, kubo: KuboSimulator) -> None:
    batch_env.seed({7: 1})
    batch_id = batch_env.insert_pending(7, "pin_sync", {"node": "elsewhere"})

    state = run(pin_sync(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_failed()
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed" and "unknown key(s) 'node' in task_data: pin_sync takes no keys" in row["error_message"]
    assert kubo.calls()["by_endpoint"].get("files/stat", 0) == 0


def test_each_tenant_syncs_its_own_node(batch_env: BatchEnv, kubo: KuboSimulator, configure) -> None:
    """BATCH_KUBO_NODES gives tenant 8 its own node; tenant 7 keeps BATCH_KUBO_URL. Both run at once."""
    batch_env.seed({7: 1, 8: 1})
    with KuboSimulator(pins=40, seed=2) as node8:
        configure(kubo_nodes=json.dumps({"8": node8.url}))

        async def both():
            return await asyncio.gather(pin_sync(tenant_id=7, return_state=True), pin_sync(tenant_id=8, return_state=True))

        states = run(both())
        assert all(s.is_completed() for s in states), [s.message for s in states]
        assert set(pins(batch_env, 7)) == set(kubo.pins()) and len(kubo.pins()) == 100
        assert set(pins(batch_env, 8)) == set(node8.pins()) and len(node8.pins()) == 40
        assert not set(kubo.pins()) & set(node8.pins())
        for node, count in ((kubo, 100), (node8, 40)):
            calls = node.calls()["by_endpoint"]
            assert (calls["pin/ls"], calls["files/stat"]) == (1, count)
    for batch_id in (r.id for r in batch_env.sql("SELECT id FROM la_batch_task")):
        batch_env.assert_consistent(batch_id)
