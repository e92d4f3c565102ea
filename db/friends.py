"""la_friend_request_log: the sent friend requests that feed add_friend's per-account daily cap.

The caller owns the transaction. ``day`` is ``yyyymmdd`` of the cap's time zone.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import DETAIL, insert_ignore, now_or
from db.models import FriendRequestLog

__all__ = ["sent_today_for_batch", "log_friend_requests", "unlogged"]

LOG: Table = FriendRequestLog.__table__  # type: ignore[assignment]


def sent_today_for_batch(session: Session, batch_id: int, day: int) -> dict[int, int]:
    """Requests sent on ``day`` by the accounts of the batch's pending items: one query."""
    pending = select(DETAIL.c.item_id).where(DETAIL.c.task_id == batch_id, DETAIL.c.status == st.DETAIL_PENDING)
    rows = session.execute(
        select(LOG.c.account_id, func.count())
        .where(LOG.c.day == day, LOG.c.account_id.in_(pending))
        .group_by(LOG.c.account_id)
    )
    return {int(account_id): int(n) for account_id, n in rows}


def log_friend_requests(
    session: Session, batch_id: int, sent: Sequence[tuple[int, str, int]], now: int | None = None
) -> int:
    """Log (account_id, friend_uid, day) requests sent by a batch: one multi-row INSERT IGNORE.

    At most one row per (batch, account) (unique key), so logging a replayed flush is harmless.
    """
    now = now_or(now)
    if not sent:
        return 0
    rows = [
        {"task_id": batch_id, "account_id": int(a), "friend_uid": uid, "day": int(day), "create_time": now}
        for a, uid, day in sent
    ]
    return int(session.execute(insert_ignore(LOG), rows).rowcount)


def unlogged(session: Session, requests: Sequence[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
    """The (account_id, friend_uid, day) requests no batch ever logged: one query."""
    if not requests:
        return []
    accounts = sorted({int(a) for a, _, _ in requests})
    query = select(LOG.c.account_id, LOG.c.friend_uid).where(LOG.c.account_id.in_(accounts)).distinct()
    logged = {(int(a), uid) for a, uid in session.execute(query)}
    return [r for r in requests if (int(r[0]), r[1]) not in logged]
