"""nickname-change under Prefect: mixed batch, bad input refused up front, cancel and resume."""

from __future__ import annotations

import asyncio
import json

import pytest

from flows.nickname_change import nickname_change
from tests.support.batch_env import BatchEnv, items_of


def run(coro):
    return asyncio.run(coro)


def nicknames(env: BatchEnv) -> dict[int, str]:
    return {r.id: r.nickname for r in env.sql("SELECT id, nickname FROM la_alt_account")}


def test_mixed_batch_ends_with_the_right_item_states(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 10}, banned_fraction=0.3, seed=5)
    banned = {700000 + int(a["uid"].split("-")[1]) for a in batch_env.sim.accounts(7) if a["status"] == "banned"}
    assert banned
    batch_env.sim.configure(fail_uids=["u7-000002"])  # platform errors past the retry budget
    before = nicknames(batch_env)
    items = [{"account_id": i, "nickname": f"新名字 {i}"} for i in range(700001, 700011)]
    items[2]["nickname"] = before[700003]  # already applied: same nickname as now

    state = run(nickname_change(tenant_id=7, items=items, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    batch_env.assert_consistent(batch_id)
    got = items_of(batch_env, batch_id)
    after = nicknames(batch_env)
    for item in items:
        account_id = item["account_id"]
        status, result, error = got[account_id]
        if account_id == 700002:
            assert status == "failed" and "HTTP 500" in error
            assert after[account_id] == before[account_id]
        elif account_id in banned:
            assert status == "failed" and "account_banned" in error
            assert after[account_id] == before[account_id]
        else:
            assert status == "success", (account_id, error)
            assert json.loads(result)["nickname"] == item["nickname"] == after[account_id]
    row = batch_env.batch(batch_id)
    assert row["failed_count"] == len(banned - {700002}) + 1
    sim_nicks = {a["uid"]: a["nickname"] for a in batch_env.sim.accounts(7)}
    assert sim_nicks["u7-000001"] == "新名字 700001"
    assert json.loads(batch_env.sql("SELECT item_data FROM la_batch_task_detail WHERE item_id=700001")[0].item_data) == {
        "account_id": 700001, "nickname": "新名字 700001"}
    calls = batch_env.uid_calls("POST /v1/me/nickname")
    assert all(calls[i] == 1 for i in calls if i != 700002)  # I6: one call per item (no retries needed)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"account_id": 700001, "nickname": "x" * 33}], "item 0 (account 700001): nickname is 33 characters long"),
        ([{"account_id": 700001, "nickname": "bad\u200bname"}], "non-printable character U+200B"),
        ([{"account_id": 700001, "nickname": " padded"}], "leading or trailing spaces"),
        ([{"account_id": 700001, "nickname": ""}], "nickname is empty"),
        ([{"account_id": 700001, "nickname": 5}], "nickname must be a string"),
        ([{"account_id": 700001}], "item 0 (account 700001): no nickname"),
        ([{"account_id": 700001, "nickname": "a"}, {"account_id": 700001, "nickname": "b"}], "duplicate account_ids: 700001"),
        ([{"account_id": 800001, "nickname": "a"}], "not active accounts of tenant 7: 800001"),
        ([], "items must be a non-empty list"),
        (None, 'task_data needs "items"'),
    ],
)
def test_bad_items_are_refused_and_write_nothing(batch_env: BatchEnv, items, message: str) -> None:
    batch_env.seed({7: 3, 8: 3})

    state = run(nickname_change(tenant_id=7, items=items, return_state=True))

    assert state.is_failed() and state.message.startswith("rejected: "), state.message
    assert message in state.message
    assert batch_env.sql("SELECT id FROM la_batch_task") == []
    assert batch_env.sim.stats()["total"] == 0


def test_many_problems_are_listed_together(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 3})
    items = [{"account_id": 700000 + i, "nickname": "\n"} for i in range(1, 13)]

    state = run(nickname_change(tenant_id=7, items=items, return_state=True))

    assert "12 invalid item(s)" in state.message and "(and 2 more)" in state.message


def test_admin_panel_row_with_bad_items_is_marked_failed(batch_env: BatchEnv) -> None:
    batch_env.seed({7: 3})
    batch_id = batch_env.insert_pending(7, "nickname_change", {"items": [{"account_id": 700001, "nickname": "a\tb"}]})

    state = run(nickname_change(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_failed()
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed" and "non-printable character U+0009" in row["error_message"]
    assert batch_env.sim.stats()["total"] == 0


def test_cancel_then_resume_applies_each_item_once(batch_env: BatchEnv, configure) -> None:
    configure(concurrency=4)
    batch_env.sim.configure(latency_ms=60)
    batch_env.seed({7: 120})
    items = [{"account_id": 700000 + i, "nickname": f"n{i}"} for i in range(1, 121)]

    batch_id, state = batch_env.cancel_from_panel(nickname_change(tenant_id=7, items=items, return_state=True), after=10)
    assert state.is_cancelled(), state.message
    batch_env.assert_consistent(batch_id)
    done_before = {i for i, (s, _, _) in items_of(batch_env, batch_id).items() if s != "pending"}
    assert 10 <= len(done_before) < 120

    resumed = run(nickname_change(tenant_id=7, batch_id=batch_id, return_state=True))

    assert resumed.is_completed(), resumed.message
    batch_env.assert_consistent(batch_id)
    row = batch_env.batch(batch_id)
    assert (row["task_status"], row["success_count"], row["total_count"]) == ("completed", 120, 120)
    calls = batch_env.uid_calls("POST /v1/me/nickname")
    assert all(calls[i] == 1 for i in done_before)
    assert sum(1 for n in calls.values() if n > 1) <= 4  # at most the cancelled run's in-flight items
    assert all(nicknames(batch_env)[i["account_id"]] == i["nickname"] for i in items)


def test_cli_items_file_and_one_line_errors(batch_env: BatchEnv, tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    batch_env.seed({7: 2})
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    repo = Path(__file__).resolve().parents[2]
    items = tmp_path / "items.json"
    items.write_text(json.dumps({"items": [{"account_id": 700001, "nickname": "cli"}]}))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.nickname_change", *args], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = cli("--tenant-id", "7", "--items-file", str(items))
    assert ok.returncode == 0, ok.stderr
    assert "completed: 1/1 processed, 1 succeeded" in ok.stdout
    bad = cli("--tenant-id", "7", "--items", '[{"account_id": 700002, "nickname": ""}]')
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: rejected: 1 invalid item(s): item 0 (account 700002)")
    usage = cli("--tenant-id", "7", "--items", "[not json")
    assert usage.returncode == 2 and usage.stderr.startswith("error: --items is not valid JSON")
    assert bad.stderr.count("\n") == usage.stderr.count("\n") == 1  # one line each
