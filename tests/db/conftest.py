"""Migrated databases for the db tests (``mysql_engine`` is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.support.services import migrated_engine


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    """A migrated database on each backend (MariaDB, SQLite)."""
    yield from migrated_engine(any_db_url)
