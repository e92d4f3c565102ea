"""Migrations re-run after a failure half-way, and never touch an accounts table they do not own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from batchlib.errors import AccountTableMismatch
from batchlib.settings import get_settings
from db.engine import make_engine
from db.migrate import current, head, upgrade
from tests.panel_accounts import PANEL_SETTINGS, panel_database, show_create

REPO = Path(__file__).resolve().parents[2]
HEAD = head()


def _sql(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        insp = inspect(engine)
        return {i["name"] for i in insp.get_indexes(table)} | {u["name"] for u in insp.get_unique_constraints(table)}
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# (version to go back to, statements that undo part of the next revision, index or table it must bring back)
HALF_DONE = {
    "0002": ("0001", ["DROP INDEX idx_detail_task_status ON la_batch_task_detail"], ("la_batch_task_detail", "idx_detail_task_status")),
    "0003": ("0002", ["DROP TABLE la_friend_request_log"], ("la_friend_request_log", None)),
    # 0007 replaced 0004's guard: re-running 0004 on top of it must end with 0007's guard again
    "0004": ("0003", [], ("la_batch_task", "uq_task_running")),
    "0005": ("0004", ["DROP INDEX uq_frl_task_account ON la_friend_request_log"], ("la_friend_request_log", "uq_frl_task_account")),
    "0006": ("0005", [], ("la_batch_run", None)),  # all done but the version: the column is not added twice
    "0007": ("0006", ["ALTER TABLE la_batch_task DROP INDEX uq_task_running"], ("la_batch_task", "uq_task_running")),
    "0010": ("0007", [], ("la_batch_run", None)),  # all done but the version: the column is not added twice
    "0011": ("0010", ["DROP INDEX idx_template_tenant ON la_batch_template"], ("la_batch_template", "idx_template_tenant")),
}


@pytest.mark.parametrize("revision", sorted(HALF_DONE))
def test_a_revision_stopped_half_way_completes_when_run_again(mysql_url: str, revision: str) -> None:
    upgrade(mysql_url)
    back_to, undo, (table, index) = HALF_DONE[revision]
    _sql(mysql_url, *undo, f"UPDATE alembic_version SET version_num = '{back_to}'")
    assert current(mysql_url) == back_to

    upgrade(mysql_url)

    assert current(mysql_url) == HEAD
    assert table in _tables(mysql_url)
    if index is not None:
        assert index in _indexes(mysql_url, table)
    assert "la_batch_run" in _tables(mysql_url)


def test_everything_present_but_the_version_is_fine_on_sqlite(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    _sql(sqlite_url, "DROP TABLE la_friend_request_log", "UPDATE alembic_version SET version_num = '0002'")
    upgrade(sqlite_url)
    assert current(sqlite_url) == HEAD and "uq_frl_task_account" in _indexes(sqlite_url, "la_friend_request_log")


@pytest.fixture
def panel_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in PANEL_SETTINGS.items():
        monkeypatch.setenv(f"BATCH_{key.upper()}", value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_panels_accounts_table_survives_a_rerun_byte_for_byte(mysql_url: str, panel_settings: None) -> None:
    panel_database(mysql_url)
    before = show_create(mysql_url)
    upgrade(mysql_url)
    _sql(mysql_url, "DROP TABLE la_friend_request_log", "UPDATE alembic_version SET version_num = '0002'")
    upgrade(mysql_url)
    assert current(mysql_url) == HEAD
    assert show_create(mysql_url) == before
    assert "idx_account_tenant_status" not in show_create(mysql_url)


def test_upgrade_refuses_an_unconfigured_panel_table_before_writing_anything(mysql_url: str) -> None:
    """The situation of the issue: default settings on a database with the panel's own
    la_alt_account. Before: a traceback half-way through 0003. Now: one line, exit 2, nothing written."""
    panel_database(mysql_url)
    before = _tables(mysql_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCH_ACCOUNT")}
    proc = subprocess.run(
        [sys.executable, "-m", "db", "upgrade", "--url", mysql_url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "has no column platform_uid" in proc.stderr and "BATCH_ACCOUNT_COL_PLATFORM_UID" in proc.stderr
    assert _tables(mysql_url) == before  # no la_batch_run, no alembic_version


def test_a_configured_table_that_does_not_exist_is_refused(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_ACCOUNT_TABLE", "member_account")
    get_settings.cache_clear()
    try:
        with pytest.raises(AccountTableMismatch, match="member_account does not exist"):
            upgrade(sqlite_url)
        assert current(sqlite_url) is None
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "column status (BATCH_ACCOUNT_COL_STATUS) is TINYINT, expected a string column"),
        ({"account_status_map": json.dumps({"alive": 1, "banned": 2})}, "no value for 'restricted'"),
        ({"account_status_map": json.dumps({"alive": 1, "banned": 2, "restricted": 2})}, "2 is given for both"),
        ({"account_status_map": json.dumps({"alive": 1, "gone": 2})}, "'gone' is not one of"),
        ({"account_col_nickname": "nickname"}, "has no column nickname (set BATCH_ACCOUNT_COL_NICKNAME to the right column"),
        ({"account_col_access_token": "expire_time"}, "BATCH_ACCOUNT_COL_ACCESS_TOKEN and BATCH_ACCOUNT_COL_TOKEN_EXPIRES_AT both"),
        ({"account_col_create_time": "", "account_col_nickname": "create_time"},
         "column create_time (BATCH_ACCOUNT_COL_NICKNAME) is INTEGER, expected a string column"),
        ({"account_col_platform_uid": ""}, "BATCH_ACCOUNT_COL_PLATFORM_UID is empty"),
    ],
)
def test_each_mismatch_is_one_line_naming_the_setting(
    mysql_url: str, panel_settings: None, monkeypatch: pytest.MonkeyPatch, env: dict, message: str
) -> None:
    panel_database(mysql_url)
    if not env:
        monkeypatch.delenv("BATCH_ACCOUNT_STATUS_MAP")
    for key, value in env.items():
        monkeypatch.setenv(f"BATCH_{key.upper()}", value)
    get_settings.cache_clear()
    with pytest.raises(AccountTableMismatch) as info:
        upgrade(mysql_url)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "la_batch_run" not in _tables(mysql_url)


def test_every_column_role_has_its_setting() -> None:
    from db.account_table import ROLES

    settings = {name[len("account_col_"):] for name in type(get_settings()).model_fields if name.startswith("account_col_")}
    assert settings == set(ROLES)


def test_bootstrap_refuses_the_same_way(mysql_url: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from deployments.bootstrap import main as bootstrap

    panel_database(mysql_url)
    monkeypatch.setenv("BATCH_DATABASE_URL", mysql_url)
    get_settings.cache_clear()
    try:
        assert bootstrap([]) == 2  # before the work pool: no Prefect API needed
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("error: the accounts table la_alt_account has no column platform_uid") and err.count("\n") == 1
    assert "la_batch_run" not in _tables(mysql_url)
