"""Copy the simulator's accounts (with their tokens) into the accounts table: demo, tests, bench.

Simulator uids look like ``u<tenant>-<nnnnnn>``; such an account gets the stable id
``tenant * 100000 + n`` so runs are reproducible. Written by ``db.import_accounts`` (the
same code as ``python -m db import-accounts``): idempotent on (tenant_id, platform_uid).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine

from db import import_accounts as write_accounts
from db import run_transaction

__all__ = ["account_id_for", "import_accounts"]

_UID = re.compile(r"u(\d+)-(\d+)")


def account_id_for(uid: str) -> int | None:
    match = _UID.fullmatch(uid)
    return int(match[1]) * 100_000 + int(match[2]) if match else None


def import_accounts(engine: Engine, accounts: Iterable[Mapping[str, Any]], *, chunk: int = 5000) -> list[int]:
    """Insert or update the given simulator accounts (status back to ``unknown``); returns their ids."""
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
            "status": "unknown",
        }
        for a in accounts
    ]
    ids: list[int] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        ids += run_transaction(engine, lambda s, part=part: write_accounts(s, part, now))
    return ids
