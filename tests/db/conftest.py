"""Migrated databases and engines for the db tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from db.engine import make_engine
from db.migrate import upgrade


def _engine(url: str) -> Iterator[Engine]:
    upgrade(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    """A migrated database on each backend (MariaDB, SQLite)."""
    yield from _engine(any_db_url)


@pytest.fixture
def mysql_engine(mysql_url: str) -> Iterator[Engine]:
    """A migrated MariaDB database."""
    yield from _engine(mysql_url)
