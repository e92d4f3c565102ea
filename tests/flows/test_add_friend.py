"""add-friend under Prefect: result notes, the per-account daily cap, the request log, resume."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from batchcore.settings import get_settings
from batchlib.handlers.add_friend import cap_day
from flows.add_friend import add_friend
from tests.support.batch_env import BatchEnv, items_of


def run(coro):
    return asyncio.run(coro)


def log_rows(env: BatchEnv, batch_id: int | None = None) -> list[tuple[int, str]]:
    query = "SELECT account_id, friend_uid FROM la_friend_request_log"
    rows = env.sql(query + " WHERE task_id = :b ORDER BY account_id", b=batch_id) if batch_id else env.sql(query)
    return [(r.account_id, r.friend_uid) for r in rows]


def test_mixed_batch_notes_statuses_and_respects_the_daily_cap(batch_env: BatchEnv, configure) -> None:
    configure(add_friend_daily_cap=2)
    batch_env.seed({7: 10})
    today = cap_day(get_settings())
    now = int(time.time())
    for friend in ("u7-000009", "u7-000010"):  # account 700001 reached the cap earlier today
        batch_env.sql("INSERT INTO la_friend_request_log (account_id, friend_uid, day, create_time)"
                      " VALUES (700001, :f, :d, :now)", f=friend, d=today, now=now)
    batch_env.sql("INSERT INTO la_friend_request_log (account_id, friend_uid, day, create_time)"
                  " VALUES (700007, 'u7-000009', :d, :now)", d=today - 1, now=now - 86400)  # yesterday: not counted
    first = [
        {"account_id": 700002, "friend_uid": "u7-000003"},
        {"account_id": 700003, "friend_uid": "u7-000002"},  # mutual: now friends
        {"account_id": 700004, "friend_uid": "u7-000005"},  # stays pending
    ]
    assert run(add_friend(tenant_id=7, items=first, return_state=True)).is_completed()
    batch_env.sim.configure(fail_uids=["u7-000006"])
    batch_env.sim.reset()
    second = [
        {"account_id": 700001, "friend_uid": "u7-000002"},  # capped: no platform call
        {"account_id": 700002, "friend_uid": "u7-000003"},  # already friends
        {"account_id": 700004, "friend_uid": "u7-000005"},  # request pending
        {"account_id": 700005, "friend_uid": "nobody-here"},  # the platform does not know that uid
        {"account_id": 700006, "friend_uid": "u7-000001"},  # platform errors past the retry budget
        {"account_id": 700007, "friend_uid": "u7-000001"},  # sent
    ]

    state = run(add_friend(tenant_id=7, items=second, return_state=True))

    assert state.is_completed(), state.message
    batch_id = max(r.id for r in batch_env.sql("SELECT id FROM la_batch_task"))
    batch_env.assert_consistent(batch_id)
    got = items_of(batch_env, batch_id)
    status = {i: s for i, (s, _, _) in got.items()}
    assert status == {700001: "failed", 700002: "success", 700004: "success", 700005: "failed",
                      700006: "failed", 700007: "success"}
    assert "daily friend request cap reached" in got[700001][2] and "2 of 2" in got[700001][2]
    assert json.loads(got[700001][1])["capped"] is True
    notes = {i: json.loads(got[i][1]) for i in (700002, 700004, 700007)}
    assert notes[700002]["status"] == "already_friends" and "already friends" in notes[700002]["note"]
    assert notes[700004]["status"] == "pending" and "pending" in notes[700004]["note"]
    assert notes[700007]["status"] == "sent"
    assert "unknown_friend" in got[700005][2] and "HTTP 500" in got[700006][2]
    calls = batch_env.uid_calls("POST /v1/me/friends")
    assert 700001 not in calls
    assert log_rows(batch_env, batch_id) == [(700007, "u7-000001")]  # only what was actually sent


def test_cap_zero_sends_nothing(batch_env: BatchEnv, configure) -> None:
    configure(add_friend_daily_cap=0)
    batch_env.seed({7: 3})

    state = run(add_friend(tenant_id=7, items=[{"account_id": 700001, "friend_uid": "u7-000002"}], return_state=True))

    assert state.is_completed()
    assert batch_env.sql("SELECT failed_count FROM la_batch_task")[0].failed_count == 1
    assert batch_env.sim.stats()["total"] == 0


def test_cancel_then_resume_logs_each_request_once(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=4)
    batch_env.sim.configure(latency_ms=60)
    batch_env.seed({7: 101})
    items = [{"account_id": 700000 + i, "friend_uid": "u7-000101"} for i in range(1, 101)]

    batch_id, state = batch_env.cancel_from_panel(add_friend(tenant_id=7, items=items, return_state=True), after=10)
    assert state.is_cancelled(), state.message

    resumed = run(add_friend(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    batch_env.assert_consistent(batch_id)
    assert batch_env.batch(batch_id)["success_count"] == 100
    logged = log_rows(batch_env, batch_id)
    # Each request logged once: one the cancelled run sent but did not record is 'pending' on
    # resume, and logged then.
    assert sorted(logged) == [(700000 + i, "u7-000101") for i in range(1, 101)]


def test_a_request_sent_but_never_logged_is_logged_when_found_pending(batch_env: BatchEnv, configure) -> None:
    """A run killed between the platform call and its flush: the resume hears 'pending'. That
    request counts toward the daily cap; one an earlier batch logged is not counted twice."""
    configure(add_friend_daily_cap=2)
    batch_env.seed({7: 5})
    tokens = {a["uid"]: a["access_token"] for a in batch_env.sim.accounts(7)}
    for uid, friend in (("u7-000001", "u7-000005"), ("u7-000002", "u7-000005")):  # sent, never logged
        reply = httpx.post(f"{batch_env.sim.url}/v1/me/friends", json={"friend_uid": friend},
                           headers={"Authorization": f"Bearer {tokens[uid]}"})
        assert reply.json()["status"] == "sent"
    earlier = run(add_friend(tenant_id=7, items=[{"account_id": 700003, "friend_uid": "u7-000005"}],
                             return_state=True))
    assert earlier.is_completed()
    items = [{"account_id": 700000 + i, "friend_uid": "u7-000005"} for i in (1, 2, 3)]

    state = run(add_friend(tenant_id=7, items=items, return_state=True))

    assert state.is_completed(), state.message
    batch_id = max(r.id for r in batch_env.sql("SELECT id FROM la_batch_task"))
    got = items_of(batch_env, batch_id)
    assert {i: json.loads(r)["status"] for i, (_, r, _) in got.items()} == dict.fromkeys((700001, 700002, 700003), "pending")
    assert log_rows(batch_env, batch_id) == [(700001, "u7-000005"), (700002, "u7-000005")]
    assert len(log_rows(batch_env)) == 3  # 700003's request stays logged once, by the earlier batch
    configure(add_friend_daily_cap=1)  # 700001's logged 'pending' request used up today's cap
    capped = run(add_friend(tenant_id=7, items=[{"account_id": 700001, "friend_uid": "u7-000004"}], return_state=True))
    assert capped.is_completed()
    assert batch_env.sql("SELECT failed_count FROM la_batch_task ORDER BY id DESC LIMIT 1")[0].failed_count == 1


@pytest.mark.parametrize(
    ("uid", "message"),
    [("", "is not a platform uid"), ("a b", "is not a platform uid"), ("x" * 65, "is not a platform uid"),
     (7, "friend_uid must be a string")],
)
def test_bad_friend_uids_are_refused(batch_env: BatchEnv, uid, message: str) -> None:
    batch_env.seed({7: 3})

    state = run(add_friend(tenant_id=7, items=[{"account_id": 700001, "friend_uid": uid}], return_state=True))

    assert state.is_failed() and message in state.message
    assert batch_env.sql("SELECT id FROM la_batch_task") == []
    assert batch_env.sim.stats()["total"] == 0
