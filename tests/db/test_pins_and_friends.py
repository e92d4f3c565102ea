"""Repositories added for the new batch types: profiles, friend request log, pins (both backends)."""

from __future__ import annotations

from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from db import (
    Account,
    IpfsPin,
    failed_items,
    log_friend_requests,
    mark_pins_removed,
    record_pins,
    remove_unseen_pins,
    sent_today_for_batch,
    set_profiles,
    upsert_accounts,
)
from tests.db.helpers import started_batch


def test_set_profiles_is_one_statement_per_500(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        upsert_accounts(s, [{"id": i, "tenant_id": 7, "platform_uid": f"u{i}", "nickname": "old"} for i in range(1, 4)])
        assert set_profiles(s, "nickname", {1: "a", 3: "c"}, now=9) == 2
    with Session(engine) as s:
        got = {a.id: (a.nickname, a.update_time) for a in s.scalars(select(Account))}
    assert got[1] == ("a", 9) and got[3] == ("c", 9) and got[2][0] == "old"


def test_friend_log_counts_today_and_ignores_replays(engine: Engine) -> None:
    claim = started_batch(engine, 3)
    with Session(engine) as s, s.begin():
        s.execute(text("INSERT INTO la_friend_request_log (account_id, friend_uid, day, create_time)"
                       " VALUES (1, 'x', 20240101, 1), (1, 'y', 20240101, 1), (2, 'x', 20231231, 1), (9, 'x', 20240101, 1)"))
        assert sent_today_for_batch(s, claim.batch_id, 20240101) == {1: 2}  # only this batch's accounts
        assert log_friend_requests(s, claim.batch_id, [(2, "z", 20240101)], now=5) == 1
        assert log_friend_requests(s, claim.batch_id, [(2, "z", 20240101)], now=5) == 0  # a replayed flush
        assert sent_today_for_batch(s, claim.batch_id, 20240101) == {1: 2, 2: 1}


def test_pins_upsert_remove_and_summary(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        record_pins(s, 7, 1, [("a", "recursive", 10), ("b", "recursive", 20), ("c", "recursive", None)], now=100)
        record_pins(s, 8, 1, [("a", "recursive", 10)], now=100)
    with Session(engine) as s, s.begin():
        record_pins(s, 7, 2, [("a", "recursive", None), ("d", "recursive", 40)], now=200)  # a: size kept
        record_pins(s, 7, 2, [("a", "recursive", None)], now=200)  # idempotent
        assert mark_pins_removed(s, 7, ["b", "zzz"], now=200) == 1
        assert remove_unseen_pins(s, 7, 2, now=201) == 1  # c
    with Session(engine) as s:
        got = {(p.tenant_id, p.cid): (p.status, p.size, p.first_seen, p.last_seen, p.removed_time) for p in s.scalars(select(IpfsPin))}
    assert got[(7, "a")] == ("present", 10, 100, 200, None)
    assert got[(7, "b")] == ("removed", 20, 100, 100, 200)
    assert got[(7, "c")][0] == "removed" and got[(7, "c")][4] == 201
    assert got[(7, "d")] == ("present", 40, 200, 200, None)
    assert got[(8, "a")][0] == "present"
    with Session(engine) as s, s.begin():
        record_pins(s, 7, 3, [("b", "recursive", None)], now=300)  # re-pinned
        assert s.execute(select(IpfsPin.status, IpfsPin.removed_time).where(IpfsPin.cid == "b", IpfsPin.tenant_id == 7)).one() == ("present", None)


def test_failed_items_lists_the_first_failures(engine: Engine) -> None:
    claim = started_batch(engine, 5)
    with Session(engine) as s, s.begin():
        s.execute(text("UPDATE la_batch_task_detail SET status='failed', error_message='boom', item_data='{\"cid\":\"x\"}'"
                       " WHERE task_id=:b AND item_id IN (2, 4, 5)"), {"b": claim.batch_id})
        total, first = failed_items(s, claim.batch_id, 2)
    assert total == 3 and first == [({"cid": "x"}, "boom"), ({"cid": "x"}, "boom")]
