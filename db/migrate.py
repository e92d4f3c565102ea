"""Bring a database to head with alembic's command API (no alembic.ini needed).

alembic is imported inside the functions: every flow run imports ``db``, and alembic
(~0.1 s to import) is only needed for migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.pool import NullPool

from db.engine import make_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "upgrade", "current", "resolve_url"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def resolve_url(url: str | None) -> str:
    if url:
        return url
    from batchlib.settings import get_settings

    return get_settings().database_url.get_secret_value()


def alembic_config(url: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = resolve_url(url)
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (existing admin tables are kept as they are)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current(url: str | None = None) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(resolve_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
