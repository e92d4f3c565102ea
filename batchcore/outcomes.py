"""The small, token-free value every item handler returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ItemOutcome", "FinalStatus", "ERROR_TEXT_MAX", "truncate_error"]

FinalStatus = Literal["success", "failed", "skipped"]
# The one cut for error text: an item's and a batch's error_message (both TEXT columns).
ERROR_TEXT_MAX = 2000


def truncate_error(text: str | None) -> str | None:
    return None if text is None else text[:ERROR_TEXT_MAX]


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    item_id: int
    status: FinalStatus
    result: dict[str, Any] | None = field(default=None)
    error: str | None = None

    @classmethod
    def success(cls, item_id: int, **result: Any) -> "ItemOutcome":
        return cls(item_id, "success", result or None)

    @classmethod
    def failed(cls, item_id: int, error: str, **result: Any) -> "ItemOutcome":
        return cls(item_id, "failed", result or None, truncate_error(error))
