"""add_friend (批量加好友): each account sends one friend request, within a daily cap.

``task_data``: ``{"items": [{"account_id": 1, "friend_uid": "u7-000002"}, ...]}``, one item per
account. ``sent``, ``pending`` (asked before) and ``already_friends`` are all successes; the
``result`` says which. The platform bans accounts that send too many requests, so an account
that already sent ``settings.add_friend_daily_cap`` requests today (calendar day of
``settings.add_friend_day_timezone``) fails with the reason and no platform call.

The cap: ``prepare`` reads today's sent counts of the batch's accounts (one query) into a
per-run counter; ``handle`` checks and bumps it (only one add_friend batch of a tenant runs
at a time, and an account belongs to one tenant, so nobody else sends for these accounts);
``apply`` logs each ``sent`` request in la_friend_request_log, at most once per (batch, account).
A ``pending`` answer for a request no batch ever logged is logged too: it is a request this
batch sent just before its run died (the resume asks again and hears "pending"), or one sent
outside this system; either way it counts toward today's cap rather than being forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.validation import account_items, check_friend_uid
from db import log_friend_requests, sent_today_for_batch, unlogged

NAME = "add_friend"
NOTES = {
    "sent": "friend request sent",
    "pending": "a request to this uid was already pending; not sent again",
    "already_friends": "already friends; nothing sent",
}


def cap_day(settings: Settings, now: float | None = None) -> int:
    """Today as yyyymmdd in the cap's time zone."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, ZoneInfo(settings.add_friend_day_timezone))
    return int(moment.strftime("%Y%m%d"))


@dataclass(slots=True)
class DailyCap:
    """Requests sent per account on ``day``: seeded from the log, bumped by this run."""

    limit: int
    day: int
    sent: dict[int, int] = field(default_factory=dict)

    def roll(self, day: int) -> None:
        if day != self.day:  # midnight passed during the batch: a new day, nothing sent yet
            self.day, self.sent = day, {}


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    return account_items(
        session, tenant_id, task_data, field="friend_uid", check=check_friend_uid, max_items=settings.max_items
    )


def prepare(session: Session, ctx: ItemContext) -> DailyCap:
    day = cap_day(ctx.settings)
    return DailyCap(ctx.settings.add_friend_daily_cap, day, sent_today_for_batch(session, ctx.batch_id, day))


async def handle(ctx: ItemContext, account_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.platform is not None and isinstance(ctx.state, DailyCap)
    if not item_data or "friend_uid" not in item_data:
        return ItemOutcome.failed(account_id, "item has no friend_uid")
    friend_uid, cap = item_data["friend_uid"], ctx.state
    cap.roll(cap_day(ctx.settings))
    sent = cap.sent.get(account_id, 0)
    if sent >= cap.limit:
        return ItemOutcome.failed(
            account_id,
            f"daily friend request cap reached: this account already sent {sent} of {cap.limit} requests "
            f"on {cap.day}; not sent (retry after the day ends)",
            friend_uid=friend_uid, capped=True,
        )
    status = await ctx.platform.add_friend(account_id, friend_uid)
    if status == "sent":
        cap.sent[account_id] = sent + 1
    return ItemOutcome.success(account_id, friend_uid=friend_uid, status=status, note=NOTES[status], day=cap.day)


def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
    """Log the requests sent (and unlogged pending ones): one multi-row INSERT IGNORE per flush."""
    def answered(status: str) -> list[tuple[int, str, int]]:
        return [
            (o.item_id, o.result["friend_uid"], o.result["day"])
            for o in outcomes
            if o.status == "success" and o.result and o.result.get("status") == status
        ]

    log_friend_requests(session, scope.batch_id, answered("sent") + unlogged(session, answered("pending")), now)


ADD_FRIEND = register(BatchType(
    NAME, "Add friends", parse, handle, apply, prepare=prepare,
    inputs={"items": list}, staged_as="items", item_keys=("account_id", "friend_uid"),
))
