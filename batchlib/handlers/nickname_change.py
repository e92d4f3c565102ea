"""nickname_change (批量昵称修改): set each account's nickname on the platform, then in our table.

``task_data``: ``{"items": [{"account_id": 1, "nickname": "..."}, ...]}``, one item per account.
Setting a nickname is idempotent, so re-running an item already applied is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.outcomes import ItemOutcome
from batchlib.settings import Settings
from batchlib.validation import account_items, check_nickname

NAME = "nickname_change"


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    return account_items(
        session, tenant_id, task_data, field="nickname", check=check_nickname, max_items=settings.max_items
    )


async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.platform is not None
    if not item_data or "nickname" not in item_data:
        return ItemOutcome.failed(account_id, "item has no nickname")
    reply = await ctx.platform.change_nickname(account_id, item_data["nickname"])
    return ItemOutcome.success(account_id, uid=reply["uid"], nickname=reply["nickname"])


def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
    """Our accounts table gets the nickname the platform confirmed (one UPDATE per 500)."""
    from db import set_profiles

    done = {o.item_id: o.result["nickname"] for o in outcomes if o.status == "success" and o.result}
    set_profiles(session, "nickname", done, now)


NICKNAME_CHANGE = register(BatchType(NAME, "Nickname change", parse, handle, apply))
