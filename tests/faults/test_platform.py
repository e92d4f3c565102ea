"""Platform faults under a running batch: 401 storms, dead refresh tokens, 429s, 5xx and
resets, slow and trickling answers, unreadable and huge bodies.

Each test runs real account-check flows (2 tenants unless said otherwise) against the
simulator and checks I1-I3, I5, I6 (calls per item) and I7 (0 tokens anywhere).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from batchlib.platform_client import PlatformClient
from batchlib.settings import get_settings
from batchlib.token_store import DbTokenStore
from flows.account_check import account_check
from tests.support.faults import FaultEnv, at_progress, run

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANTS = {7: 1000, 8: 1000}


async def both_tenants(**kw):
    return await asyncio.gather(*(account_check(tenant_id=t, return_state=True, **kw) for t in TENANTS))


def finished(env: FaultEnv, states) -> list[int]:
    assert all(s.is_completed() for s in states), [s.message for s in states]
    ids = env.batch_ids()
    assert len(ids) == len(TENANTS)
    return ids


def test_401_storm_of_one_account_refreshes_once(fault_env: FaultEnv, leak_check) -> None:
    """64 concurrent calls of one expired account: 1 refresh request, 64 successes, <= 2 GETs per
    call, token_version +1."""
    (account_id,) = fault_env.seed_canaries({7: 1})
    uid = f"u7-{account_id % 100000:06d}"
    fault_env.sim.expire([uid])

    async def storm():
        store = DbTokenStore(fault_env.engine)
        async with PlatformClient.from_settings(get_settings(), store) as client:
            return await asyncio.gather(*(client.get_me(account_id) for _ in range(64)), return_exceptions=True)

    results = run(storm())

    assert [r.status for r in results if not isinstance(r, BaseException)] == ["alive"] * 64, results
    stats = fault_env.sim.stats()
    assert stats["by_endpoint"].get("POST /v1/oauth/refresh") == 1 and stats["refreshes"] == 1
    assert 64 < stats["by_endpoint"]["GET /v1/me"] <= 2 * 64  # each call: at most one 401 and one retry
    version = fault_env.sql("SELECT token_version FROM la_alt_account WHERE id = :i", i=account_id)[0][0]
    assert version == 1
    leak_check(fault_env)


def test_401_storm_mid_batch_refreshes_each_account_once(fault_env: FaultEnv, leak_check) -> None:
    """Every token of both tenants expires at ~30 %: both batches complete, 2,000 successes,
    at most 1 refresh request per account, at most 3 GET /v1/me per account (401, retry)."""
    fault_env.seed_canaries(TENANTS)

    async def scenario():
        expire = at_progress(fault_env, 0.3, lambda: [fault_env.sim.expire(tenant_id=t) for t in TENANTS],
                             min_total=2000)
        return (await asyncio.gather(both_tenants(), expire))[0]

    ids = finished(fault_env, run(scenario()))

    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
        assert fault_env.batch(batch_id)["success_count"] == 1000
    fault_env.assert_calls_per_item(2)
    refreshes = fault_env.uid_calls("POST /v1/oauth/refresh")
    assert refreshes and max(refreshes.values()) == 1
    assert fault_env.sim.stats()["refreshes"] == len(refreshes)
    leak_check(fault_env)


def test_refused_refresh_fails_those_accounts_once(fault_env: FaultEnv, configure, leak_check) -> None:
    """50 accounts expired with a dead refresh token: exactly those 50 fail with an auth reason,
    1 refresh request and 1 GET each (no loop); the other 1,950 succeed."""
    fault_env.seed_canaries(TENANTS)
    dead = [f"u7-{n:06d}" for n in range(1, 51)]
    fault_env.sim.configure(refresh_fail_uids=dead)
    fault_env.sim.expire(dead)

    ids = finished(fault_env, run(both_tenants()))

    failed = {
        r.item_id: r.error_message
        for r in fault_env.sql("SELECT item_id, error_message FROM la_batch_task_detail WHERE status='failed'")
    }
    assert sorted(failed) == [700000 + n for n in range(1, 51)]
    assert set(failed.values()) == {"refresh token rejected"}
    refreshes = fault_env.uid_calls("POST /v1/oauth/refresh")
    assert sorted(refreshes) == sorted(failed) and set(refreshes.values()) == {1}
    calls = fault_env.assert_calls_per_item(1)
    assert len(calls) == 2000
    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
    leak_check(fault_env)


def test_429_with_retry_after_is_respected(fault_env: FaultEnv, leak_check) -> None:
    """20 % of calls answer 429 with Retry-After 0.3 s: 0 retries sooner than 0.3 s after a 429,
    at most 1 + 3 calls per item, every item final (success, or failed as rate limited)."""
    fault_env.seed_canaries(TENANTS)
    fault_env.sim.configure(rate_429=0.2, retry_after_s=0.3, rng_seed=7)

    ids = finished(fault_env, run(both_tenants()))

    calls = fault_env.assert_calls_per_item(1 + get_settings().http_max_retries)
    assert len(calls) == 2000
    early = 0
    by_uid: dict[str, list[dict]] = {}
    for call in fault_env.sim.calls(endpoint="GET /v1/me"):
        by_uid.setdefault(call["uid"], []).append(call)
    for seq in by_uid.values():
        seq.sort(key=lambda c: c["t"])
        early += sum(1 for a, b in zip(seq, seq[1:]) if a["status"] == 429 and b["t"] - a["end"] < 0.3 - 0.01)
    assert early == 0
    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
    reasons = {r.error_message for r in fault_env.sql("SELECT error_message FROM la_batch_task_detail WHERE status='failed'")}
    assert reasons <= {"rate limited (HTTP 429); gave up after 4 attempts"}
    leak_check(fault_env)


def test_5xx_and_connection_resets(fault_env: FaultEnv, leak_check) -> None:
    """30 % 5xx plus 10 % connection resets: both batches complete, every item final, at most
    1 + 3 calls per item, failures only 'platform error' / 'connection error' (expected ~2 %)."""
    fault_env.seed_canaries(TENANTS)
    fault_env.sim.configure(error_rate_5xx=0.3, reset_rate=0.1, rng_seed=5)

    ids = finished(fault_env, run(both_tenants()))

    fault_env.assert_calls_per_item(1 + get_settings().http_max_retries)
    failed = fault_env.sql("SELECT error_message FROM la_batch_task_detail WHERE status='failed'")
    assert len(failed) < 0.06 * 2000
    assert all(m.error_message.startswith(("platform error (HTTP 5", "connection error (", "undecodable"))
               for m in failed), {m.error_message for m in failed}
    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
    leak_check(fault_env)


def test_slow_and_trickling_answers_time_out(fault_env: FaultEnv, configure, leak_check) -> None:
    """Read timeout 0.5 s, body timeout 1 s; 20 accounts hang 2 s, 20 trickle one byte every 0.2 s
    (each read is quick; the body would take 3 s): those 40 fail as timeouts after exactly 4 attempts,
    both batches end in < 15 s, the other 1,960 succeed with 1 call each."""
    configure(http_read_timeout_s=0.5, http_body_timeout_s=1.0, http_max_retries=3)
    fault_env.seed_canaries(TENANTS)
    hang = [f"u7-{n:06d}" for n in range(1, 21)]
    trickle = [f"u8-{n:06d}" for n in range(1, 21)]
    fault_env.sim.configure(hang_s=2, trickle_s=3, trickle_interval_s=0.2)
    for uid in hang:
        fault_env.sim.script(uid, *["hang"] * 4)
    for uid in trickle:
        fault_env.sim.script(uid, *["trickle"] * 4)

    started = time.monotonic()
    ids = finished(fault_env, run(both_tenants()))
    elapsed = time.monotonic() - started

    assert elapsed < 15
    failed = {r.item_id: r.error_message for r in fault_env.sql(
        "SELECT item_id, error_message FROM la_batch_task_detail WHERE status='failed'")}
    expected = {700000 + n for n in range(1, 21)} | {800000 + n for n in range(1, 21)}
    assert set(failed) == expected
    assert {m for i, m in failed.items() if i < 800000} == {"timeout (ReadTimeout); gave up after 4 attempts"}
    assert {m for i, m in failed.items() if i > 800000} == {"timeout (BodyTimeout); gave up after 4 attempts"}
    deadline = time.monotonic() + 10  # the simulator logs a call when its (abandoned) answer ends
    while fault_env.sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    calls = fault_env.assert_calls_per_item(4)
    assert all(calls.get(i) == 4 for i in expected) and len(calls) == 2000, {i: calls.get(i) for i in expected if calls.get(i) != 4}
    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
    leak_check(fault_env)


def test_unreadable_wrong_typed_and_huge_bodies(fault_env: FaultEnv, leak_check) -> None:
    """Scripted bodies: 20 accounts get 2 unreadable (HTML/truncated) 200s -> failed; 20 get 1 ->
    succeed on the retry; 20 get JSON of the wrong types -> failed at once (1 call); 5 get a
    50 MB body -> failed at once; 0 other failures; peak RSS grows < 40 MB."""
    import resource

    fault_env.seed_canaries(TENANTS)
    fault_env.sim.configure(big_body_bytes=50 * 1024 * 1024, big_body_rate=0.0)  # scripted only
    groups = {
        "twice_garbage": range(1, 21), "once_garbage": range(21, 41), "wrong": range(41, 61), "big": range(61, 66),
    }
    scripts = {"twice_garbage": ["garbage", "garbage"], "once_garbage": ["garbage"], "wrong": ["wrong"], "big": ["big"]}
    for name, numbers in groups.items():
        for n in numbers:
            fault_env.sim.script(f"u8-{n:06d}", *scripts[name])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    ids = finished(fault_env, run(both_tenants()))

    rss_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert rss_growth_mb < 40
    failed = {r.item_id: r.error_message for r in fault_env.sql(
        "SELECT item_id, error_message FROM la_batch_task_detail WHERE status='failed'")}
    ids_of = {name: {800000 + n for n in numbers} for name, numbers in groups.items()}
    assert set(failed) == ids_of["twice_garbage"] | ids_of["wrong"] | ids_of["big"]
    assert {failed[i] for i in ids_of["twice_garbage"]} == {"unreadable response body (not a JSON object)"}
    assert {failed[i] for i in ids_of["wrong"]} == {"unexpected account state from the platform"}
    assert {failed[i] for i in ids_of["big"]} == {f"response body larger than {get_settings().http_max_body_bytes} bytes"}
    calls = fault_env.assert_calls_per_item(2)
    assert all(calls[i] == 1 for i in ids_of["wrong"] | ids_of["big"])
    assert all(calls[i] == 2 for i in ids_of["twice_garbage"] | ids_of["once_garbage"])
    for batch_id in ids:
        fault_env.assert_invariants(batch_id, expect_total=1000)
    leak_check(fault_env)
