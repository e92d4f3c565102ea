"""Small helpers shared by the repositories."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Insert, Table

from db.models import BatchRun, BatchTask, BatchTaskDetail

T = TypeVar("T")

TASK: Table = BatchTask.__table__  # type: ignore[assignment]
DETAIL: Table = BatchTaskDetail.__table__  # type: ignore[assignment]
RUN: Table = BatchRun.__table__  # type: ignore[assignment]

IN_CHUNK = 500


def now_or(now: int | None) -> int:
    return int(time.time()) if now is None else int(now)


def dumps(value: Any) -> str | None:
    """Compact JSON text as the admin panel stores it; None stays NULL."""
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None or text == "" else json.loads(text)


def chunks(seq: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def insert_ignore(table: Table) -> Insert:
    """INSERT that skips rows hitting a unique key: IGNORE on MySQL, OR IGNORE on SQLite."""
    stmt = table.insert().prefix_with("OR IGNORE", dialect="sqlite")
    return stmt.prefix_with("IGNORE", dialect="mysql").prefix_with("IGNORE", dialect="mariadb")

