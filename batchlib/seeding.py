"""Copy the simulator's accounts (with their tokens) into la_alt_account: demo, tests, bench.

Simulator uids look like ``u<tenant>-<nnnnnn>``; such an account gets the stable id
``tenant * 100000 + n`` so runs are reproducible. Inserted in bulk (multi-row INSERTs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, delete

__all__ = ["account_id_for", "import_accounts"]

_UID = re.compile(r"u(\d+)-(\d+)")


def account_id_for(uid: str) -> int | None:
    match = _UID.fullmatch(uid)
    return int(match[1]) * 100_000 + int(match[2]) if match else None


def import_accounts(engine: Engine, accounts: Iterable[Mapping[str, Any]], *, chunk: int = 5000) -> list[int]:
    """Insert (replacing same ids) the given simulator accounts; returns their ids."""
    from db import Account, run_transaction

    now = int(time.time())
    rows = [
        {
            "id": account_id_for(a["uid"]),
            "tenant_id": int(a["tenant_id"]),
            "platform_uid": a["uid"],
            "nickname": a.get("nickname"),
            "avatar_url": a.get("avatar_url"),
            "access_token": a["access_token"],
            "refresh_token": a["refresh_token"],
            "token_expires_at": now + int(a.get("expires_in", 3600)),
            "token_version": 0,
            "status": "unknown",
            "create_time": now,
            "update_time": now,
        }
        for a in accounts
    ]
    table = Account.__table__
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]

        def write(session, part=part) -> None:
            ids = [r["id"] for r in part if r["id"] is not None]
            if ids:
                session.execute(delete(table).where(table.c.id.in_(ids)))
            session.execute(table.insert(), part)

        run_transaction(engine, write)
    return [r["id"] for r in rows]
