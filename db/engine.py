"""Engines for MariaDB/MySQL and SQLite, tuned for short transactions."""

from __future__ import annotations

import logging
import ssl
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from batchcore.settings import Settings, get_settings
from db.account_table import verify_once
from db.retry import run_transaction

__all__ = ["make_engine", "get_engine", "database_url", "run_transaction", "SQLITE_BUSY_TIMEOUT_MS"]

SQLITE_BUSY_TIMEOUT_MS = 30_000


class _NoResultRows(logging.Filter):
    """Drop SQLAlchemy's ``Row (...)`` debug records: a row of la_alt_account holds tokens.

    ``hide_parameters`` keeps bound values out of logs, but with the root logger at DEBUG the
    engine also logs every fetched row (found by tests/faults: tokens in the log).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Row "))


logging.getLogger("sqlalchemy.engine.Engine").addFilter(_NoResultRows())


def make_engine(url: str, **overrides: Any) -> Engine:
    """Build an engine; bound parameters are always hidden from logs and error text."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, **overrides)
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 280, "hide_parameters": True}
    if "poolclass" not in overrides:
        options.update(pool_size=10, max_overflow=20)
    if backend in ("mysql", "mariadb"):
        options["connect_args"] = {
            "connect_timeout": 5,
            "read_timeout": 30,
            "write_timeout": 30,
            "charset": "utf8mb4",
        }
    options.update(overrides)
    engine = create_engine(url, **options)
    if make_url(url).get_driver_name() == "pymysql":
        connection_class = _pymysql_connection_class()

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            return connection_class(*cargs, **cparams)

    return engine


@lru_cache(maxsize=1)
def _pymysql_connection_class() -> type:
    """PyMySQL's Connection with one TLS context per process (per set of TLS options).

    PyMySQL 1.2 builds a new ``SSLContext`` for every connection, also when no TLS option is
    given (it then uses TLS if the server offers it): loading the system's CA bundle costs
    ~30 ms of CPU per connection, against ~0.4 ms for the rest of a connect (measured here).
    The context is the same every time, and an ``SSLContext`` may be shared by any number of
    connections and threads, so each distinct set of options builds it once. TLS behaves as
    PyMySQL's (the URL's ``ssl_*`` options, else TLS when the server offers it); a changed CA
    file is read by the next process.
    """
    import pymysql.connections

    contexts: dict[tuple, ssl.SSLContext] = {}

    class Connection(pymysql.connections.Connection):
        def _create_ssl_ctx(self, sslp: Any) -> ssl.SSLContext:
            if isinstance(sslp, ssl.SSLContext):
                return sslp
            try:
                key = tuple(sorted(sslp.items()))
                cached = contexts.get(key)
            except TypeError:  # an option that is not hashable: build it as PyMySQL does
                return super()._create_ssl_ctx(sslp)
            if cached is None:
                cached = contexts[key] = super()._create_ssl_ctx(sslp)
            return cached

    return Connection


def _sqlite_engine(url: str, **overrides: Any) -> Engine:
    options: dict[str, Any] = {
        "hide_parameters": True,
        "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    }
    options.update(overrides)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (SAVEPOINT-safe)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Take the write lock up front: a deferred transaction that later upgrades to a
        # writer gets SQLITE_BUSY at once, without waiting on busy_timeout.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def database_url(settings: Settings | None = None) -> str:
    """The mirror's URL: ``BATCH_DATABASE_URL`` of ``settings`` (default: the process's settings)."""
    return (settings or get_settings()).database_url.get_secret_value()


def get_engine(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: ``database_url(settings)``).

    Opening the mirror checks the accounts table against the ``BATCH_ACCOUNT_*`` settings
    once per process: ``AccountTableMismatch`` (one line) before anything is written.
    """
    if url is None:
        url = database_url(settings)
    engine = _cached_engine(url)
    verify_once(engine)
    return engine
