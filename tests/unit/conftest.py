"""The unit loop's database: SQLite files copied from one migrated template (migrating costs seconds)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from db import make_engine, upgrade


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest migration, never written by a test."""
    path = tmp_path_factory.mktemp("template") / "mirror.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_engine(migrated_sqlite: Path, tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database of the test's own."""
    path = tmp_path / "mirror.db"
    shutil.copyfile(migrated_sqlite, path)
    engine = make_engine(f"sqlite:///{path}")
    try:
        yield engine
    finally:
        engine.dispose()
