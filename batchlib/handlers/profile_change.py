"""Batch types that set one profile field per account: on the platform, then in our table.

``task_data``: ``{"items": [{"account_id": 1, "<field>": "..."}, ...]}``, one item per account.
Setting a field is idempotent, so re-running an item already applied is harmless.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.validation import account_items
from db import set_profiles

__all__ = ["profile_change_type"]


def profile_change_type(name: str, title: str, field: str, check: Callable[[Any], Any], call: str) -> BatchType:
    """Register a type whose items set ``field`` through the platform client's method ``call``."""

    def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
        return account_items(session, tenant_id, task_data, field=field, check=check, max_items=settings.max_items)

    async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
        assert ctx.platform is not None
        if not item_data or field not in item_data:
            return ItemOutcome.failed(account_id, f"item has no {field}")
        reply = await getattr(ctx.platform, call)(account_id, item_data[field])
        return ItemOutcome.success(account_id, uid=reply["uid"], **{field: reply[field]})

    def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
        """Our accounts table gets the value the platform confirmed (one UPDATE per 500)."""
        done = {o.item_id: o.result[field] for o in outcomes if o.status == "success" and o.result}
        set_profiles(session, field, done, now)

    return register(BatchType(
        name, title, parse, handle, apply, inputs={"items": list}, staged_as="items", item_keys=("account_id", field),
    ))
