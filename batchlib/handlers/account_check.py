"""account_check (批量验活): read each account's state from the platform and store it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.validation import account_ids_from, check_accounts, check_tenant
from db import active_account_ids, active_accounts_query, record_checks

NAME = "account_check"


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    """``{"account_ids": [...]}``; without it, every active account of the tenant."""
    tenant = check_tenant(session, tenant_id)
    raw = task_data.get("account_ids")
    if raw is None:
        ids = active_account_ids(session, tenant)
    else:
        ids = account_ids_from(raw, max_items=settings.max_items)
        check_accounts(session, tenant, ids)
    return [(i, None) for i in ids]


def item_query(
    session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings
) -> Select[tuple[int]] | None:
    """Without ``account_ids``: the tenant's active accounts as a query (the detail rows are
    inserted from it in the database); with them, None (``parse`` checks the list)."""
    if task_data.get("account_ids") is not None:
        return None
    return active_accounts_query(check_tenant(session, tenant_id))


async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.platform is not None
    started = time.perf_counter()
    state = await ctx.platform.get_me(account_id)
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return ItemOutcome.success(account_id, status=state.status, uid=state.uid, latency_ms=latency_ms)


def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
    """The accounts table learns each checked account's status and check time."""
    record_checks(
        session,
        [(o.item_id, o.result["status"], now) for o in outcomes if o.status == "success" and o.result],
    )


ACCOUNT_CHECK = register(BatchType(
    NAME, "Account liveness check", parse, handle, apply, inputs={"account_ids": list}, staged_as="account_ids",
    item_query=item_query,
))
