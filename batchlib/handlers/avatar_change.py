"""avatar_change (批量头像更换): set each account's avatar URL on the platform, then in our table.

``task_data``: ``{"items": [{"account_id": 1, "avatar_url": "https://..."}, ...]}``, one item
per account. Setting an avatar is idempotent, so re-running an item already applied is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.outcomes import ItemOutcome
from batchlib.settings import Settings
from batchlib.validation import account_items, check_avatar_url

NAME = "avatar_change"


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    return account_items(
        session, tenant_id, task_data, field="avatar_url", check=check_avatar_url, max_items=settings.max_items
    )


async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.platform is not None
    if not item_data or "avatar_url" not in item_data:
        return ItemOutcome.failed(account_id, "item has no avatar_url")
    reply = await ctx.platform.change_avatar(account_id, item_data["avatar_url"])
    return ItemOutcome.success(account_id, uid=reply["uid"], avatar_url=reply["avatar_url"])


def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
    """Our accounts table gets the avatar URL the platform confirmed (one UPDATE per 500)."""
    from db import set_profiles

    done = {o.item_id: o.result["avatar_url"] for o in outcomes if o.status == "success" and o.result}
    set_profiles(session, "avatar_url", done, now)


AVATAR_CHANGE = register(BatchType(NAME, "Avatar change", parse, handle, apply))
