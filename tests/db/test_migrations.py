"""Migrations on empty databases and on an existing installation's verbatim tables."""

from __future__ import annotations

import pymysql
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from batchlib.errors import BatchAlreadyActive
from db import run_transaction
from db.ddl import ORIGINAL_DDL
from db.engine import make_engine
from db.migrate import current, head, upgrade
from db.models import BatchRun, BatchTask, BatchTaskDetail, BatchTemplate, columns_of
from tests.db.helpers import new_batch

HEAD = head()
TABLES = {"la_batch_task", "la_batch_task_detail", "la_batch_run", "la_alt_account", "la_friend_request_log",
          "la_batch_template"}


def test_upgrade_empty_database(any_db_url: str) -> None:
    assert current(any_db_url) is None
    upgrade(any_db_url)
    upgrade(any_db_url)  # idempotent at head
    assert current(any_db_url) == HEAD
    engine = make_engine(any_db_url)
    try:
        insp = inspect(engine)
        assert TABLES <= set(insp.get_table_names())
        task_cols = [c["name"] for c in insp.get_columns("la_batch_task")]
        extra = ["run_key"] if engine.dialect.name == "mysql" else []
        assert task_cols == columns_of(BatchTask) + extra
        assert [c["name"] for c in insp.get_columns("la_batch_task_detail")] == columns_of(BatchTaskDetail)
        assert [c["name"] for c in insp.get_columns("la_batch_run")] == columns_of(BatchRun)
        assert "notified_status" in columns_of(BatchRun)
        assert [c["name"] for c in insp.get_columns("la_batch_template")] == columns_of(BatchTemplate)
        detail_indexes = {i["name"]: i for i in insp.get_indexes("la_batch_task_detail")}
        assert detail_indexes["uq_detail_task_item"]["unique"]
        assert detail_indexes["idx_detail_task_status"]["column_names"] == ["task_id", "status"]
    finally:
        engine.dispose()


def _db_name(url: str) -> str:
    return str(make_url(url).database)


def test_upgrade_existing_installation_keeps_rows(mysql_url: str) -> None:
    conn = pymysql.connect(host="127.0.0.1", user="root", database=_db_name(mysql_url), autocommit=True)
    with conn.cursor() as cur:
        for ddl in ORIGINAL_DDL.values():
            cur.execute(ddl)
        cols = "(tenant_id, task_name, task_type, task_status, create_admin_id, create_time, update_time)"
        cur.executemany(
            f"INSERT INTO la_batch_task {cols} VALUES (%s, 'old', %s, %s, 1, 100, 100)",
            [
                (1, "account_check", "pending"),   # 1: older duplicate -> failed
                (1, "account_check", "running"),   # 2: newest active, kept
                (1, "account_check", "completed"),  # 3
                (2, "account_check", "pending"),   # 4: other tenant, kept
            ],
        )
        cur.executemany(
            "INSERT INTO la_batch_task_detail (task_id, item_id, status, create_time, update_time)"
            " VALUES (%s, %s, 'success', 100, 100)",
            [(3, 1), (3, 2), (3, 2)],  # one duplicate (task_id, item_id)
        )
    upgrade(mysql_url)
    assert current(mysql_url) == HEAD
    with conn.cursor() as cur:
        cur.execute("SELECT id, task_status, error_message FROM la_batch_task ORDER BY id")
        rows = cur.fetchall()
        cur.execute("SELECT task_id, item_id FROM la_batch_task_detail ORDER BY id")
        details = cur.fetchall()
        cur.execute("SHOW CREATE TABLE la_batch_task")
        create = cur.fetchone()[1]
    conn.close()
    assert rows == (
        (1, "failed", "superseded: duplicate active batch (migration)"),
        (2, "running", None),
        (3, "completed", None),
        (4, "pending", None),
    )
    assert details == ((3, 1), (3, 2))
    assert "COMMENT '租户ID'" in create and "uq_task_running" in create
    engine = make_engine(mysql_url)
    try:
        with pytest.raises(BatchAlreadyActive) as info:
            new_batch(engine, tenant_id=1)
        assert info.value.batch_id == 2
    finally:
        engine.dispose()


def test_sqlite_guard_migration_fails_older_duplicates(sqlite_url: str) -> None:
    upgrade(sqlite_url, "0003")
    engine = make_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            for status in ("running", "pending"):
                conn.execute(
                    text(
                        "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status,"
                        " create_admin_id, create_time, update_time) VALUES (5, 'x', 'pin_sync', :s, 1, 1, 1)"
                    ),
                    {"s": status},
                )
        upgrade(sqlite_url)
        rows = run_transaction(
            engine, lambda s: s.execute(text("SELECT id, task_status FROM la_batch_task ORDER BY id")).all()
        )
        assert [tuple(r) for r in rows] == [(1, "failed"), (2, "pending")]
    finally:
        engine.dispose()


def test_cli_upgrade_and_current(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from db.__main__ import main

    assert main(["current", "--url", sqlite_url]) == 0
    assert main(["upgrade", "--url", sqlite_url]) == 0
    assert capsys.readouterr().out.split() == ["<none>", HEAD]
