"""la_ipfs_pin: the pins of each tenant's IPFS node, kept in step by pin_sync.

The caller owns the transaction. Every function is set-based (one statement per call, or
per 500 CIDs) and idempotent, so a replayed mirror flush changes nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import DETAIL, chunks, loads, now_or
from db.models import IpfsPin

__all__ = ["PIN_PRESENT", "PIN_REMOVED", "record_pins", "mark_pins_removed", "remove_unseen_pins", "failed_items"]

PINS: Table = IpfsPin.__table__  # type: ignore[assignment]
PIN_PRESENT = "present"
PIN_REMOVED = "removed"


def record_pins(
    session: Session,
    tenant_id: int,
    batch_id: int,
    seen: Sequence[tuple[str, str, int | None]],
    now: int | None = None,
) -> None:
    """Upsert (cid, pin_type, size or None) pins seen on the node: present, last seen by this batch.

    A known pin keeps its first_seen and, when ``size`` is None (its stat failed), its size.
    """
    now = now_or(now)
    if not seen:
        return
    rows = [
        {
            "tenant_id": tenant_id, "cid": cid, "pin_type": pin_type, "size": size, "status": PIN_PRESENT,
            "first_seen": now, "last_seen": now, "removed_time": None, "last_task_id": batch_id,
            "create_time": now, "update_time": now,
        }
        for cid, pin_type, size in seen
    ]
    dialect = session.get_bind().dialect.name
    stmt = (mysql.insert if dialect in ("mysql", "mariadb") else sqlite.insert)(PINS)
    new = stmt.inserted if dialect in ("mysql", "mariadb") else stmt.excluded  # type: ignore[attr-defined]
    changes = {
        "pin_type": new.pin_type,
        "size": func.coalesce(new.size, PINS.c.size),
        "status": PIN_PRESENT,
        "last_seen": now,
        "removed_time": None,
        "last_task_id": batch_id,
        "update_time": now,
    }
    if dialect in ("mysql", "mariadb"):
        stmt = stmt.on_duplicate_key_update(**changes)
    else:
        stmt = stmt.on_conflict_do_update(index_elements=["tenant_id", "cid"], set_=changes)
    for part in chunks(rows):
        session.execute(stmt.values(list(part)))


def mark_pins_removed(session: Session, tenant_id: int, cids: Sequence[str], now: int | None = None) -> int:
    """Pins known as present that are gone from the node: status removed (one UPDATE per 500)."""
    now = now_or(now)
    changed = 0
    for part in chunks(sorted(set(cids))):
        changed += session.execute(
            update(PINS)
            .where(PINS.c.tenant_id == tenant_id, PINS.c.status == PIN_PRESENT, PINS.c.cid.in_(part))
            .values(status=PIN_REMOVED, removed_time=now, update_time=now)
        ).rowcount
    return changed


def remove_unseen_pins(session: Session, tenant_id: int, batch_id: int, now: int | None = None) -> int:
    """After a complete sync: present pins this batch did not list are removed. One UPDATE."""
    now = now_or(now)
    return int(
        session.execute(
            update(PINS)
            .where(
                PINS.c.tenant_id == tenant_id,
                PINS.c.status == PIN_PRESENT,
                or_(PINS.c.last_task_id.is_(None), PINS.c.last_task_id != batch_id),
            )
            .values(status=PIN_REMOVED, removed_time=now, update_time=now)
        ).rowcount
    )


def failed_items(session: Session, batch_id: int, limit: int = 10) -> tuple[int, list[tuple[dict | None, str]]]:
    """(number of failed details, the first ``limit`` of them as (item_data, error_message)), by id."""
    where = (DETAIL.c.task_id == batch_id, DETAIL.c.status == st.DETAIL_FAILED)
    total = session.execute(select(func.count()).select_from(DETAIL).where(*where)).scalar_one()
    rows = session.execute(
        select(DETAIL.c.item_data, DETAIL.c.error_message).where(*where).order_by(DETAIL.c.id).limit(limit)
    ).all()
    return int(total), [(loads(data), str(error or "")) for data, error in rows]
