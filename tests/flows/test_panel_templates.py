"""Templates from the admin panel: la_batch_template rows, written with the panel's SQL alone,
become schedules of the type's deployment on the session's Prefect server (the maintenance
run's sync), refused rows say why and block nothing, and "run now" is one INSERT ... SELECT.

The panel is stood in for by the statements of docs/database.md (PDO ``?`` placeholders sent
with PyMySQL) against the test's MariaDB database; everything else is real.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path

import pymysql
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from sqlalchemy.engine import make_url

from deployments.templates import main as templates_cli
from flows.account_check import account_check
from flows.dispatcher import dispatch_once
from flows.maintenance import maintenance
from tasks.templates_sync import sync_templates_once
from tests.support.batch_env import BatchEnv
from tests.support.services import MYSQL_HOST, MYSQL_PASSWORD, MYSQL_PORT, MYSQL_USER

# -- the panel's statements, exactly as docs/database.md gives them ---------------------------

SAVE_TEMPLATE = (
    "INSERT INTO la_batch_template (tenant_id, name, task_type, task_data, cron, timezone, enabled, create_admin_id,"
    " create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, UNIX_TIMESTAMP(), UNIX_TIMESTAMP())"
)
EDIT_TEMPLATE = (
    "UPDATE la_batch_template SET name = ?, task_data = ?, cron = ?, timezone = ?, sync_status = 'pending',"
    " update_time = UNIX_TIMESTAMP() WHERE id = ? AND delete_time IS NULL"
)
ENABLE_TEMPLATE = (
    "UPDATE la_batch_template SET enabled = ?, sync_status = 'pending', update_time = UNIX_TIMESTAMP()"
    " WHERE id = ? AND delete_time IS NULL"
)
DELETE_TEMPLATE = (
    "UPDATE la_batch_template SET delete_time = UNIX_TIMESTAMP(), sync_status = 'pending',"
    " update_time = UNIX_TIMESTAMP() WHERE id = ? AND delete_time IS NULL"
)
READ_TEMPLATES = (
    "SELECT id, name, task_type, task_data, cron, timezone, enabled, sync_status, sync_error, sync_time, update_time"
    " FROM la_batch_template WHERE tenant_id = ? AND delete_time IS NULL ORDER BY name"
)
RUN_TEMPLATE_NOW = (
    "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, task_data, create_admin_id, create_time,"
    " update_time) SELECT tenant_id, name, task_type, 'pending', task_data, ?, UNIX_TIMESTAMP(), UNIX_TIMESTAMP()"
    " FROM la_batch_template WHERE id = ? AND delete_time IS NULL AND sync_status = 'synced'"
)
TEMPLATE_STATEMENTS = [SAVE_TEMPLATE, EDIT_TEMPLATE, ENABLE_TEMPLATE, DELETE_TEMPLATE, READ_TEMPLATES, RUN_TEMPLATE_NOW]


class Panel:
    """The PHP panel: PDO-style statements on its own connection, autocommit."""

    def __init__(self, url: str) -> None:
        self.conn = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD,
                                    database=make_url(url).database, autocommit=True)

    def run(self, statement: str, *params) -> pymysql.cursors.Cursor:
        cur = self.conn.cursor(pymysql.cursors.DictCursor)
        cur.execute(statement.replace("?", "%s"), params)
        return cur

    def save(self, tenant_id: int, name: str, task_type: str, task_data, cron: str = "0 3 * * *",
             timezone: str = "UTC", enabled: int = 1, admin: int = 5) -> int:
        data = task_data if task_data is None or isinstance(task_data, str) else json.dumps(task_data)
        return self.run(SAVE_TEMPLATE, tenant_id, name, task_type, data, cron, timezone, enabled, admin).lastrowid

    def templates(self, tenant_id: int) -> dict[int, dict]:
        return {r["id"]: r for r in self.run(READ_TEMPLATES, tenant_id).fetchall()}

    def row(self, template_id: int) -> dict:
        return self.run("SELECT * FROM la_batch_template WHERE id = ?", template_id).fetchone()


@pytest.fixture
def panel(batch_env: BatchEnv):
    p = Panel(batch_env.url)
    yield p
    p.conn.close()


def _deployment_id(name: str) -> str:
    async def go():
        flow_name, deployment = name.split("/")
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(flow_name)
            return str(await client.create_deployment(flow_id=flow_id, name=deployment))

    return asyncio.run(go())


def _schedules(deployment_id: str) -> dict[str, object]:
    """slug -> schedule of a deployment."""
    with get_client(sync_client=True) as client:
        return {s.slug: s for s in client.read_deployment_schedules(deployment_id)}


@flow(name="template-sync-pass")
def _sync_pass(full: bool = False) -> dict:
    return dict(sync_templates_once(full=full))


def test_the_docs_list_the_panels_template_statements() -> None:
    section = Path(__file__).resolve().parents[2].joinpath("docs/database.md").read_text()
    section = section.split("## For the admin panel", 1)[1]
    flat = re.sub(r"\s+", " ", section)
    for statement in TEMPLATE_STATEMENTS:
        assert statement in flat, statement


def test_panel_templates_become_schedules_and_follow_the_rows(
    batch_env: BatchEnv, panel: Panel, capsys, tmp_path: Path
) -> None:
    batch_env.seed({7: 5, 8: 5})
    nick = _deployment_id("nickname-change/nickname-change")
    check = _deployment_id("account-check/account-check")
    tag = uuid.uuid4().hex[:6]
    good_items = [{"account_id": 700001, "nickname": "Ann"}]
    good = panel.save(7, f"nick-{tag}", "nickname_change", {"items": good_items}, timezone="Asia/Shanghai")
    checks = panel.save(7, f"check-{tag}", "account_check", None, cron="0 */6 * * *")
    bad = {
        panel.save(99, f"b1-{tag}", "account_check", {}): "refused: unknown tenant 99",
        panel.save(7, f"b2-{tag}", "nickname_change", {"items": [{"account_id": 800001, "nickname": "B"}]}):
            "refused: ",
        panel.save(7, f"b3-{tag}", "nickname_change", {"items": [{"account_id": 700001}]}): "refused: ",
        panel.save(7, f"b4-{tag}", "account_check", {}, cron="0 3 * *"): 'invalid cron or timezone: Invalid cron',
        panel.save(7, f"b5-{tag}", "account_check", {}, timezone="Mars/Base"): "Invalid timezone",
        panel.save(7, f"b6-{tag}", "account_check", "{account_ids: [1"): "invalid task_data: task_data is not valid JSON",
        panel.save(7, f"b7-{tag}", "teleport", {}): "unknown task_type 'teleport'",
        panel.save(7, f"b8-{tag}", "account_check", {"items_count": 3}): "takes account_ids, not items_count",
        panel.save(7, f"nick-{tag}", "nickname_change", {"items": good_items}): f"template #{good} of nickname_change",
        panel.save(7, "", "account_check", {}): "the template has no name",
    }

    # The maintenance run's first pass syncs every row: the good ones become schedules.
    totals = maintenance(run_for_s=0)
    assert totals.get("template_created") == 2 and totals.get("template_error") == len(bad), totals
    rows = panel.templates(7) | panel.templates(99)
    assert rows[good]["sync_status"] == "synced" and rows[good]["sync_error"] is None
    assert rows[checks]["sync_status"] == "synced"
    for template_id, reason in bad.items():
        row = rows[template_id]
        assert row["sync_status"] == "error" and reason in row["sync_error"] and "\n" not in row["sync_error"], row
    schedule = _schedules(nick)[f"nick-{tag}"]
    assert schedule.active and schedule.schedule.cron == "0 3 * * *" and schedule.schedule.timezone == "Asia/Shanghai"
    assert schedule.parameters == {"tenant_id": 7, "items": good_items, "task_name": f"nick-{tag}", "create_admin_id": 5}
    assert _schedules(check)[f"check-{tag}"].parameters == {"tenant_id": 7, "task_name": f"check-{tag}",
                                                            "create_admin_id": 5}
    assert not {f"b{i}-{tag}" for i in range(1, 9)} & (set(_schedules(nick)) | set(_schedules(check)))

    # Nothing changed: a pass reads the table and stops.
    assert _sync_pass() == {}

    # An edit updates the same schedule.
    new_items = [{"account_id": 700002, "nickname": "Bea"}]
    panel.run(EDIT_TEMPLATE, f"nick-{tag}", json.dumps({"items": new_items}), "30 4 * * 1", "UTC", good)
    assert _sync_pass() == {"template_updated": 1, "template_error": len(bad)}  # the refused rows: looked at again
    edited = _schedules(nick)[f"nick-{tag}"]
    assert edited.id == schedule.id and edited.schedule.cron == "30 4 * * 1" and edited.parameters["items"] == new_items

    # A bad edit is refused and leaves the schedule as it was.
    panel.run(EDIT_TEMPLATE, f"nick-{tag}", json.dumps({"items": [{"account_id": 800001, "nickname": "X"}]}),
              "30 4 * * 1", "UTC", good)
    _sync_pass()
    assert panel.row(good)["sync_status"] == "error" and "refused: " in panel.row(good)["sync_error"]
    assert _schedules(nick)[f"nick-{tag}"].parameters["items"] == new_items

    # Disabled: paused; enabled again: active.
    panel.run(EDIT_TEMPLATE, f"nick-{tag}", json.dumps({"items": new_items}), "30 4 * * 1", "UTC", good)
    panel.run(ENABLE_TEMPLATE, 0, good)
    _sync_pass()
    assert panel.row(good)["sync_status"] == "synced" and not _schedules(nick)[f"nick-{tag}"].active
    panel.run(ENABLE_TEMPLATE, 1, good)
    _sync_pass()
    assert _schedules(nick)[f"nick-{tag}"].active

    # A schedule deleted on the Prefect server comes back at the next full pass.
    with get_client(sync_client=True) as client:
        client.delete_deployment_schedule(check, _schedules(check)[f"check-{tag}"].id)
    assert _sync_pass() == {}
    assert _sync_pass(full=True).get("template_created") == 1
    assert f"check-{tag}" in _schedules(check)

    # CLI templates live next to them: listed with their source, never touched by the sync.
    items_file = tmp_path / "items.json"
    items_file.write_text(json.dumps(good_items))
    assert templates_cli(["add", "--name", f"cli-{tag}", "--type", "nickname_change", "--tenant-id", "7",
                          "--items-file", str(items_file), "--cron", "0 5 * * *"]) == 0
    same_name = panel.save(7, f"cli-{tag}", "nickname_change", {"items": new_items})
    capsys.readouterr()
    _sync_pass()
    assert "already exists on nickname_change (saved with the CLI" in panel.row(same_name)["sync_error"]
    assert _schedules(nick)[f"cli-{tag}"].parameters == {"tenant_id": 7, "items": good_items}
    assert templates_cli(["list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"^nick-{tag}  nickname_change  30 4 \* \* 1  panel #{good}  ", listing, re.M), listing
    assert re.search(rf"^cli-{tag}  nickname_change  0 5 \* \* \*  cli  ", listing, re.M), listing
    assert templates_cli(["remove", "--name", f"nick-{tag}", "--type", "nickname_change"]) == 2
    assert f"is the admin panel's (la_batch_template #{good})" in capsys.readouterr().err
    assert templates_cli(["remove", "--name", f"cli-{tag}", "--type", "nickname_change"]) == 0

    # Names freed (the CLI template removed, the first nick-* row deleted): the rows refused
    # for their name are accepted at the next change.
    panel.run(DELETE_TEMPLATE, good)
    panel.run(DELETE_TEMPLATE, checks)
    assert _sync_pass() == {"template_removed": 2, "template_created": 2, "template_error": len(bad) - 1}
    assert panel.row(good)["sync_status"] == "removed" and panel.row(good)["prefect_schedule_id"] is None
    assert f"check-{tag}" not in _schedules(check)
    dup = next(i for i, reason in bad.items() if reason.startswith("template #"))
    assert panel.row(same_name)["sync_status"] == "synced" and panel.row(dup)["sync_status"] == "synced"
    assert str(_schedules(nick)[f"nick-{tag}"].id) == panel.row(dup)["prefect_schedule_id"] != str(schedule.id)
    panel.run(DELETE_TEMPLATE, same_name)
    for template_id in bad:
        panel.run(DELETE_TEMPLATE, template_id)
    _sync_pass()
    assert not {f"cli-{tag}", f"nick-{tag}"} & set(_schedules(nick))
    assert _sync_pass(full=True) == {}  # removed rows are not read again


@flow(name="dispatch-pass")
def _dispatch_pass(deployments: dict[str, str]) -> dict:
    return dict(dispatch_once(deployments=deployments))


def test_run_now_from_the_panel_is_a_batch(batch_env: BatchEnv, panel: Panel, unit_deployment) -> None:
    batch_env.seed({7: 5})
    _deployment_id("account-check/account-check")
    tag = uuid.uuid4().hex[:6]
    # A paused template: synced (so it can be run now) but not firing on the shared test server.
    template = panel.save(7, f"now-{tag}", "account_check", {"account_ids": [700001, 700002]}, enabled=0)
    broken = panel.save(99, f"broken-{tag}", "account_check", {"account_ids": [1]}, enabled=0)
    assert panel.run(RUN_TEMPLATE_NOW, 3, template).rowcount == 0  # not synced yet: refused
    _sync_pass()
    assert panel.row(template)["sync_status"] == "synced" and panel.row(broken)["sync_status"] == "error"

    assert panel.run(RUN_TEMPLATE_NOW, 3, broken).rowcount == 0  # a refused template does not run
    cur = panel.run(RUN_TEMPLATE_NOW, 3, template)
    assert cur.rowcount == 1
    batch_id = cur.lastrowid
    row = batch_env.batch(batch_id)
    assert (row["task_status"], row["task_name"], row["create_admin_id"]) == ("pending", f"now-{tag}", 3)
    assert json.loads(row["task_data"]) == {"account_ids": [700001, 700002]}

    # The dispatcher starts it like any panel row; its run (here in this process) does the batch.
    assert _dispatch_pass(unit_deployment) == {"started": 1}
    state = asyncio.run(account_check(batch_id=batch_id, tenant_id=7, return_state=True))
    assert state.is_completed(), state
    done = batch_env.batch(batch_id)
    assert (done["task_status"], done["total_count"], done["success_count"]) == ("completed", 2, 2)
    assert set(batch_env.uid_calls()) == {700001, 700002}

    panel.run(DELETE_TEMPLATE, template)
    _sync_pass()
    assert panel.row(template)["sync_status"] == "removed"
