"""bio_change (批量签名修改): ``{"items": [{"account_id": 1, "bio": "..."}, ...]}``.

The bio lives on the platform only (our accounts table has no column for it), so the type has
no ``apply``: an item's outcome, with the bio the platform confirmed, is its detail row. Setting
a bio is idempotent, so re-running an item already applied is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.batch_types import BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.validation import account_items

__all__ = ["BIO_CHANGE", "BIO_MAX", "check_bio"]

NAME = "bio_change"
BIO_MAX = 160  # the platform's limit (docs/platform-api.md)


def check_bio(value: Any) -> str:
    """At most 160 printable characters, newlines allowed; empty clears the bio."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if len(value) > BIO_MAX:
        raise ValueError(f"is {len(value)} characters long (at most {BIO_MAX})")
    bad = next((c for c in value if not (c.isprintable() or c == "\n")), None)
    if bad is not None:
        raise ValueError(f"contains the non-printable character U+{ord(bad):04X}")
    return value


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    return account_items(session, tenant_id, task_data, field="bio", check=check_bio, max_items=settings.max_items)


async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.platform is not None
    if not item_data or "bio" not in item_data:
        return ItemOutcome.failed(account_id, "item has no bio")
    reply = await ctx.platform.change_bio(account_id, item_data["bio"])
    return ItemOutcome.success(account_id, uid=reply["uid"], bio=reply["bio"])


BIO_CHANGE = register(BatchType(
    NAME, "Bio change", parse, handle, inputs={"items": list}, staged_as="items", item_keys=("account_id", "bio"),
))
