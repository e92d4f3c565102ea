"""What an item handler may use: ids, settings, the batch's clients. Never a token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from batchcore.settings import Settings

if TYPE_CHECKING:
    from batchlib.platform_client import PlatformClient

__all__ = ["ItemContext"]


@dataclass(frozen=True, slots=True)
class ItemContext:
    tenant_id: int
    batch_id: int
    task_type: str
    settings: Settings
    engine: Engine
    platform: "PlatformClient | None" = None
    kubo: Any = None
    state: Any = None  # what the type's ``prepare`` returned for this run (per-run, in memory)
