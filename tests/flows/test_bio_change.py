"""bio-change under Prefect: the platform gets each bio once, banned accounts fail, bad bios are refused."""

from __future__ import annotations

import asyncio
import json

from flows.bio_change import bio_change
from tests.support.batch_env import BatchEnv, items_of


def test_bios_reach_the_platform_and_the_detail_rows(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 6}, banned_fraction=0.34, seed=3)
    banned = {700000 + int(a["uid"].split("-")[1]) for a in batch_env.sim.accounts(7) if a["status"] == "banned"}
    bios = {700000 + n: f"line one\nbio {n} ✓" for n in range(1, 7)}
    bios[700006] = ""  # an empty bio clears it

    state = asyncio.run(bio_change(tenant_id=7, items=[{"account_id": i, "bio": b} for i, b in bios.items()],
                                   return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task WHERE task_type = 'bio_change'")]
    batch_env.assert_consistent(batch_id)
    on_platform = {700000 + int(a["uid"].split("-")[1]): a["bio"] for a in batch_env.sim.accounts(7)}
    for account_id, (status, result, error) in items_of(batch_env, batch_id).items():
        if account_id in banned:
            assert status == "failed" and "account_banned" in error and on_platform[account_id] == ""
        else:
            assert status == "success", error
            assert json.loads(result)["bio"] == bios[account_id] == on_platform[account_id]
    assert banned and batch_env.batch(batch_id)["failed_count"] == len(banned)
    assert set(batch_env.uid_calls("POST /v1/me/bio").values()) == {1}  # I6: one call per item


def test_a_bio_over_160_characters_is_refused_and_nothing_is_written(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 2})

    state = asyncio.run(bio_change(tenant_id=7, items=[{"account_id": 700001, "bio": "x" * 161}], return_state=True))

    assert state.is_failed() and "item 0 (account 700001): bio is 161 characters long" in state.message, state.message
    assert batch_env.sql("SELECT COUNT(*) AS n FROM la_batch_task")[0].n == 0
    assert batch_env.uid_calls("POST /v1/me/bio") == {}
