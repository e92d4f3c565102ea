"""avatar-change under Prefect: mixed batch and URL validation up front."""

from __future__ import annotations

import asyncio
import json

import pytest

from flows.avatar_change import avatar_change
from tests.support.batch_env import BatchEnv, items_of


def run(coro):
    return asyncio.run(coro)


def test_mixed_batch_ends_with_the_right_item_states(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 6})
    batch_env.sim.configure(fail_uids=["u7-000005"])
    current = {r.id: r.avatar_url for r in batch_env.sql("SELECT id, avatar_url FROM la_alt_account")}
    assert current[700001]  # odd accounts start with an avatar
    items = [{"account_id": i, "avatar_url": f"https://cdn.example.com/a/{i}.png?v=2"} for i in range(700001, 700006)]
    items[0]["avatar_url"] = current[700001]  # already applied

    state = run(avatar_change(tenant_id=7, items=items, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    batch_env.assert_consistent(batch_id)
    got = items_of(batch_env, batch_id)
    after = {r.id: r.avatar_url for r in batch_env.sql("SELECT id, avatar_url FROM la_alt_account")}
    assert got[700005][0] == "failed" and "HTTP 500" in got[700005][2] and after[700005] == current[700005]
    for item in items[:4]:
        status, result, _ = got[item["account_id"]]
        assert status == "success" and json.loads(result)["avatar_url"] == item["avatar_url"]
        assert after[item["account_id"]] == item["avatar_url"]
    row = batch_env.batch(batch_id)
    assert (row["success_count"], row["failed_count"]) == (4, 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://cdn.example.com/a.png", "must be an http(s) URL"),
        ("https:///a.png", "must be an http(s) URL with a host"),
        ("/relative/a.png", "must be an http(s) URL"),
        ("https://cdn.example.com/a b.png", "contains spaces"),
        ("https://user:secret@cdn.example.com/a.png", "must not carry credentials"),
        ("https://cdn.example.com:99999/a.png", "is not a valid URL"),
        ("https://cdn.example.com/" + "a" * 500, "characters long (at most 512)"),
        (None, "avatar_url must be a string"),
    ],
)
def test_bad_urls_are_refused_and_write_nothing(batch_env: BatchEnv, url, message: str) -> None:
    batch_env.seed({7: 3})

    state = run(avatar_change(tenant_id=7, items=[{"account_id": 700001, "avatar_url": url}], return_state=True))

    assert state.is_failed() and state.message.startswith("rejected: "), state.message
    assert message in state.message
    assert "secret" not in state.message or "credentials" in state.message
    assert batch_env.sql("SELECT id FROM la_batch_task") == []
    assert batch_env.sim.stats()["total"] == 0
