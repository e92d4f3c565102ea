"""Schema steps for the migrations that look before they act.

MariaDB/MySQL DDL is not transactional: a revision that fails half-way leaves the tables it
created behind and the version where it was, so the next ``python -m db upgrade`` runs the
whole revision again. Every step here does nothing when its result is already there, which
makes each revision safe to re-run.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

__all__ = ["has_table", "has_column", "has_index", "create_table", "create_index", "drop_index", "columns_of_table"]


def _inspector() -> sa.Inspector:
    return sa.inspect(op.get_bind())


def has_table(name: str) -> bool:
    return _inspector().has_table(name)


def columns_of_table(name: str) -> set[str]:
    return {c["name"] for c in _inspector().get_columns(name)}


def has_column(table: str, column: str) -> bool:
    return column in columns_of_table(table)


def has_index(table: str, name: str) -> bool:
    inspector = _inspector()
    names = {i["name"] for i in inspector.get_indexes(table)}
    names |= {u["name"] for u in inspector.get_unique_constraints(table)}
    return name in names


def create_table(name: str, *columns: Any, **kw: Any) -> bool:
    """Create ``name`` unless it exists; True if this call created it."""
    if has_table(name):
        return False
    op.create_table(name, *columns, **kw)
    return True


def create_index(name: str, table: str, columns: list[str], *, unique: bool = False) -> None:
    if not has_index(table, name):
        op.create_index(name, table, columns, unique=unique)


def drop_index(name: str, table: str) -> None:
    if has_table(table) and has_index(table, name):
        op.drop_index(name, table_name=table)
