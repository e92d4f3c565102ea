"""Bring a database to head with alembic's command API (no alembic.ini needed).

alembic is imported inside the functions: every flow run imports ``db``, and alembic
(~0.1 s to import) is only needed for migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import make_url
from sqlalchemy.pool import NullPool

from batchcore.errors import AccountTableMismatch
from db.account_table import accounts_table, table_exists, verify
from db.engine import database_url, make_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "check_accounts_table", "upgrade", "current", "head", "resolve_url"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# alembic is imported inside the functions that run migrations: importing it costs ~0.57 s
# (measured, 2 cores), and every flow and task process imports ``db`` but never migrates.


def resolve_url(url: str | None) -> str:
    if url:
        return url
    return database_url()


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = resolve_url(url)
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (existing admin tables are kept as they are).

    The accounts table is checked against the ``BATCH_ACCOUNT_*`` settings first: an adopted
    table that lacks a configured column, or a configured table that does not exist and is
    not the default one (which the migrations create), raises ``AccountTableMismatch``
    before any migration runs; the table is checked again at the end.
    """
    from alembic import command

    accounts = accounts_table()
    engine = make_engine(resolve_url(url), poolclass=NullPool)
    try:
        _check_accounts_table(engine)
        command.upgrade(alembic_config(url), revision)
        if table_exists(engine, accounts.spec.table):  # absent only when stopped before revision 0003
            verify(engine, accounts)
    finally:
        engine.dispose()


def check_accounts_table(url: str | None = None) -> None:
    """Raise ``AccountTableMismatch`` (one line) when the accounts table is not what the
    ``BATCH_ACCOUNT_*`` settings describe; reads only (a SQLite file that does not exist yet
    is not created: it has no table to adopt)."""
    url = resolve_url(url)
    database = make_url(url).database
    if make_url(url).get_backend_name() == "sqlite" and (not database or not Path(database).exists()):
        _check_accounts_table(None)
        return
    engine = make_engine(url, poolclass=NullPool)
    try:
        _check_accounts_table(engine)
    finally:
        engine.dispose()


def _check_accounts_table(engine) -> None:
    """``engine`` None: a database with no tables yet."""
    accounts = accounts_table()
    if engine is not None and table_exists(engine, accounts.spec.table):
        verify(engine, accounts)
    elif not accounts.spec.is_default:
        raise AccountTableMismatch(
            f"the accounts table {accounts.spec.table} does not exist; the migrations create only "
            "the default la_alt_account (leave every BATCH_ACCOUNT_* setting unset for it)"
        )


def current(url: str | None = None) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(resolve_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The newest revision of the migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
