"""run_transaction against real disconnects on MariaDB, and what it refuses to retry."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from db import run_transaction
from db.models import FriendRequestLog
from db.retry import is_retryable
from tests.support.services import mysql_admin


def _log_row(s: Session, uid: str) -> None:
    s.add(FriendRequestLog(account_id=1, friend_uid=uid, day=20250101, create_time=1))
    s.flush()


def _count(engine: Engine, uid: str) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).where(FriendRequestLog.friend_uid == uid)) or 0)


def test_survives_idle_timeout(mysql_engine: Engine) -> None:
    run_transaction(mysql_engine, lambda s: s.execute(text("SET SESSION wait_timeout=2")))
    time.sleep(3)  # the pooled connection is now dead on the server side
    run_transaction(mysql_engine, lambda s: _log_row(s, "idle"))
    assert _count(mysql_engine, "idle") == 1


def test_kill_mid_transaction_reruns_whole_fn(mysql_engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="db.retry")
    attempts: list[int] = []

    def fn(s: Session) -> None:
        attempts.append(1)
        _log_row(s, "killed")
        if len(attempts) == 1:
            conn_id = s.execute(text("SELECT CONNECTION_ID()")).scalar()
            admin = mysql_admin()
            try:
                with admin.cursor() as cur:
                    cur.execute(f"KILL {int(conn_id)}")
            finally:
                admin.close()
        s.execute(text("SELECT 1"))

    run_transaction(mysql_engine, fn, base_delay=0.01)
    assert len(attempts) == 2
    assert _count(mysql_engine, "killed") == 1
    assert len(caplog.records) == 1 and "killed" not in caplog.text  # no bound values logged


def test_integrity_error_is_not_retried(engine: Engine) -> None:
    attempts: list[int] = []

    def fn(s: Session) -> None:
        attempts.append(1)
        s.execute(text("INSERT INTO la_batch_run (task_id, fence, create_time, update_time) VALUES (404, 0, 1, 1)"))

    with pytest.raises(IntegrityError):  # FK: la_batch_task 404 does not exist
        run_transaction(engine, fn)
    assert attempts == [1]


def test_gives_up_after_the_budget(engine: Engine) -> None:
    attempts: list[int] = []

    def fn(s: Session) -> None:
        attempts.append(1)
        raise OperationalError("stmt", {}, sqlite3.OperationalError("database is locked"))

    with pytest.raises(OperationalError):
        run_transaction(engine, fn, attempts=3, base_delay=0.001)
    assert len(attempts) == 3


def test_classification() -> None:
    import pymysql

    def wrap(orig: Exception) -> OperationalError:
        return OperationalError("stmt", {}, orig)

    assert is_retryable(wrap(pymysql.err.OperationalError(1213, "Deadlock found")))
    assert is_retryable(wrap(pymysql.err.OperationalError(1205, "Lock wait timeout")))
    assert is_retryable(wrap(pymysql.err.OperationalError(2013, "Lost connection")))
    assert is_retryable(wrap(pymysql.err.InterfaceError(0, "")))  # type: ignore[arg-type]
    assert is_retryable(wrap(sqlite3.OperationalError("database is locked")))
    assert not is_retryable(wrap(pymysql.err.OperationalError(1054, "Unknown column")))
    assert not is_retryable(wrap(sqlite3.OperationalError("no such table: x")))
    assert not is_retryable(ValueError("x"))
