"""Retry a whole transaction on transient database errors.

Retried: disconnects (MySQL 2006, 2013, 2014, 2055, 1927, PyMySQL connection-lost
errors, SQLAlchemy ``connection_invalidated``), a server that cannot be reached or is
shutting down (2002, 2003, 1053: a restart), lock wait timeout 1205, deadlock 1213 and
SQLite "database is locked". Never retried: integrity and programming errors.

The unit of retry is ``fn``: a statement that failed mid-transaction took the earlier
statements of that transaction with it, so only re-running all of them is correct. If the
connection drops during COMMIT itself the outcome is unknown; ``fn`` should be idempotent
(guarded UPDATEs, INSERT IGNORE) so a re-run is harmless.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

__all__ = ["run_transaction", "is_retryable", "RETRYABLE_MYSQL_CODES"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DISCONNECT_CODES = frozenset({2006, 2013, 2014, 2055, 1927})
UNREACHABLE_CODES = frozenset({2002, 2003, 1053})  # can't connect (socket / TCP), server shutdown in progress
RETRYABLE_MYSQL_CODES = DISCONNECT_CODES | UNREACHABLE_CODES | {1205, 1213}
_SQLITE_LOCKED = ("database is locked", "database table is locked")


def _mysql_code(err: BaseException) -> int | None:
    args = getattr(err, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_retryable(err: BaseException) -> bool:
    """True when re-running the whole transaction may succeed."""
    if isinstance(err, (sa_exc.IntegrityError, sa_exc.ProgrammingError)):
        return False
    if not isinstance(err, sa_exc.DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    orig = err.orig
    if isinstance(orig, sqlite3.OperationalError):
        return any(m in str(orig) for m in _SQLITE_LOCKED)
    try:  # imported here: only MySQL errors need it (~95 ms to import, measured), SQLite never does
        import pymysql
    except ImportError:  # pragma: no cover
        return False
    if isinstance(orig, pymysql.err.IntegrityError | pymysql.err.ProgrammingError):
        return False
    if isinstance(orig, pymysql.err.InterfaceError):
        return True  # (0, '') and friends: the socket is gone
    if isinstance(orig, pymysql.err.MySQLError):
        return _mysql_code(orig) in RETRYABLE_MYSQL_CODES
    return False


def after_commit(session: Session) -> None:
    """Test seam, called once a transaction has committed and before ``fn``'s result returns.

    tests/faults replace it to raise a 2013 "lost connection" right after a commit: the
    commit's acknowledgement is lost, the transaction is retried although it took effect.
    """


def _describe(err: BaseException) -> str:
    orig = getattr(err, "orig", None)
    code = _mysql_code(orig) if orig is not None else None
    name = type(orig).__name__ if orig is not None else type(err).__name__
    return f"{name}" + (f" {code}" if code is not None else "")


def run_transaction(
    engine: Engine,
    fn: Callable[[Session], T],
    *,
    attempts: int = 6,
    base_delay: float = 0.05,
    max_delay: float = 2.0,
) -> T:
    """Run ``fn(session)`` in one transaction; retry the whole of it on transient errors."""
    for attempt in range(1, attempts + 1):
        try:
            with Session(engine, expire_on_commit=False) as session:
                with session.begin():
                    result = fn(session)
                after_commit(session)
                return result
        except sa_exc.DBAPIError as err:
            if attempt >= attempts or not is_retryable(err):
                raise
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            log.warning(
                "transaction attempt %d/%d failed (%s); retrying in %.3fs",
                attempt, attempts, _describe(err), delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
