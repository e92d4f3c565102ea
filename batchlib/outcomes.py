"""The small, token-free value every item handler returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ItemOutcome", "FinalStatus", "ERROR_MESSAGE_MAX"]

FinalStatus = Literal["success", "failed", "skipped"]
ERROR_MESSAGE_MAX = 1000


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
        return cls(item_id, "failed", result or None, error[:ERROR_MESSAGE_MAX])
