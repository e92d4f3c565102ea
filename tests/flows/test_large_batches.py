"""Item lists beyond task_data's 64 KB and Prefect's 512 KiB of parameters: 10,000 items from a
file on the command line, staged by the admin panel in SQL, staged by ``flows.stage_items``."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.account_check import account_check
from flows.nickname_change import nickname_change
from flows.stage_items import main as stage_main
from tests.support.batch_env import BatchEnv

REPO = Path(__file__).resolve().parents[2]
N = 10_000
IDS = [700_000 + n for n in range(1, N + 1)]


def run(coro):
    return asyncio.run(coro)


def assert_done(env: BatchEnv, batch_id: int, total: int) -> dict:
    """Completed, every item a success, counters == a recount; one nickname call per item."""
    env.assert_consistent(batch_id)
    row = env.batch(batch_id)
    assert (row["task_status"], row["total_count"], row["success_count"]) == ("completed", total, total), row
    calls = env.uid_calls("POST /v1/me/nickname")
    assert len(calls) == total and set(calls.values()) == {1}
    return row


def test_10000_nicknames_from_a_csv_file_on_the_command_line(batch_env: BatchEnv, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    batch_env.seed({7: N})
    path = tmp_path / "nicknames.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["account_id", "nickname"])
        writer.writerows([i, f"新 {i}"] for i in IDS)

    done = subprocess.run(
        [sys.executable, "-m", "flows.nickname_change", "--tenant-id", "7", "--items-file", str(path)],
        cwd=REPO, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        capture_output=True, text=True, timeout=600,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert f"completed: {N}/{N} processed, {N} succeeded" in done.stdout
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    row = assert_done(batch_env, batch_id, N)
    assert json.loads(row["task_data"]) == {"items_count": N, "source": "file:nicknames.csv"}
    nick = batch_env.sql("SELECT item_data FROM la_batch_task_detail WHERE item_id = :i", i=IDS[-1])[0].item_data
    assert json.loads(nick) == {"account_id": IDS[-1], "nickname": f"新 {IDS[-1]}"}


def test_10000_items_staged_by_the_panel_in_sql(batch_env: BatchEnv) -> None:
    """The statements docs/database.md gives the panel: one transaction, the batch row with a
    summary, then its detail rows; the run (as the dispatcher starts it) validates and runs them."""
    batch_env.seed({7: N})
    now = int(time.time())
    with batch_env.engine.begin() as conn:
        cur = conn.connection.cursor()
        cur.execute(
            "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data, create_admin_id,"
            " create_time, update_time) VALUES (7, 'rename 10k', 'nickname_change', 'pending', %s, 1, %s, %s)",
            (json.dumps({"items_count": N, "source": "panel upload"}), now, now),
        )
        batch_id = cur.lastrowid
        for start in range(0, N, 1000):
            cur.executemany(
                "INSERT INTO la_batch_task_detail (task_id, item_id, item_data, status, create_time, update_time)"
                " VALUES (%s, %s, %s, 'pending', %s, %s)",
                [(batch_id, i, json.dumps({"account_id": i, "nickname": f"p{i}"}), now, now)
                 for i in IDS[start : start + 1000]],
            )

    state = run(nickname_change(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_completed(), state.message
    row = assert_done(batch_env, batch_id, N)
    assert json.loads(row["task_data"]) == {"items_count": N, "source": "panel upload"}  # the panel's own text
    assert {a["nickname"] for a in batch_env.sim.accounts(7)} == {f"p{i}" for i in IDS}


@pytest.mark.parametrize(
    ("task_data", "details", "reason"),
    [
        ({"items_count": 3}, [(700001, {"nickname": "a"})], "items_count 3 but 1 detail rows are staged"),
        (None, [(700001, {"account_id": 700002, "nickname": "a"})], "item_id must be the account id"),
        (None, [(700001, {"nickname": "a", "nickanme": "b"})], "unknown key(s) 'nickanme'"),
        (None, [(800001, {"nickname": "a"})], "not active accounts of tenant 7: 800001"),
        ({"items_count": 1}, [], "no detail rows are staged"),
    ],
)
def test_bad_staged_rows_fail_their_batch_without_a_call(batch_env: BatchEnv, task_data, details, reason: str) -> None:
    batch_env.seed({7: 3, 8: 3})
    batch_id = batch_env.insert_pending(7, "nickname_change", json.dumps(task_data))
    for item_id, data in details:
        batch_env.sql("INSERT INTO la_batch_task_detail (task_id, item_id, item_data, status, create_time,"
                      " update_time) VALUES (:b, :i, :d, 'pending', 0, 0)", b=batch_id, i=item_id, d=json.dumps(data))

    state = run(nickname_change(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_failed() and reason in state.message, state.message
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed" and reason in row["error_message"] and "\n" not in row["error_message"]
    assert batch_env.sim.stats()["total"] == 0


def test_stage_items_command_then_a_run_by_batch_id(batch_env: BatchEnv, tmp_path: Path, capsys) -> None:
    batch_env.seed({7: 50})
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(str(i) for i in IDS[:50]))
    assert stage_main(["--type", "account_check", "--tenant-id", "7", str(path)]) == 0
    batch_id = int(capsys.readouterr().out)
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "pending" and json.loads(row["task_data"]) == {"items_count": 50, "source": "staged:ids.txt"}
    assert batch_env.sql("SELECT COUNT(*) FROM la_batch_task_detail WHERE task_id = :b", b=batch_id)[0][0] == 50

    state = run(account_check(tenant_id=7, batch_id=batch_id, return_state=True))

    assert state.is_completed(), state.message
    batch_env.assert_consistent(batch_id)
    assert len(batch_env.uid_calls()) == 50


def test_stage_items_refusals_are_one_line_and_write_nothing(batch_env: BatchEnv, tmp_path: Path, capsys) -> None:
    batch_env.seed({7: 3})
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 30_000 + "]" * 30_000)
    foreign = tmp_path / "foreign.json"
    foreign.write_text('[{"account_id": 800001, "nickname": "x"}]')
    for argv, reason in [
        (["--type", "nickname_change", "--tenant-id", "7", str(deep)], "nested more than 16 levels"),
        (["--type", "nickname_change", "--tenant-id", "7", str(foreign)], "not active accounts of tenant 7"),
        (["--type", "pin_sync", "--tenant-id", "7", str(foreign)], "pin_sync takes no items"),
        (["--type", "nickname_change", "--tenant-id", "7", "--admin-id", str(2**31), str(foreign)], "admin id must be"),
        (["--type", "teleport", "--tenant-id", "7", str(foreign)], "invalid choice"),
    ]:
        try:
            code = stage_main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and reason in err, err
    assert batch_env.sql("SELECT COUNT(*) FROM la_batch_task")[0][0] == 0
