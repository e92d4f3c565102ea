"""Repository for la_alt_account (caller owns the transaction). Tokens never reach repr or logs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from db import statuses as st
from db._util import ACCOUNT, chunks, now_or

__all__ = [
    "Credentials", "tenant_exists", "active_account_ids", "foreign_ids", "load_credentials",
    "load_credentials_many", "save_credentials", "record_checks", "update_profile", "set_profiles", "upsert_accounts",
    "tenants_with_accounts",
]

_LIVE = ACCOUNT.c.delete_time.is_(None)


@dataclass(frozen=True, slots=True)
class Credentials:
    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_version: int
    platform_uid: str


def tenant_exists(session: Session, tenant_id: int) -> bool:
    """A tenant exists when it has at least one non-deleted account."""
    return session.execute(
        select(ACCOUNT.c.id).where(ACCOUNT.c.tenant_id == tenant_id, _LIVE).limit(1)
    ).first() is not None


def active_account_ids(session: Session, tenant_id: int) -> list[int]:
    """Ids of the tenant's usable accounts (not banned, not disabled, not deleted)."""
    return [
        int(i)
        for i in session.execute(
            select(ACCOUNT.c.id)
            .where(ACCOUNT.c.tenant_id == tenant_id, _LIVE, ACCOUNT.c.status.not_in(st.ACCOUNT_INACTIVE))
            .order_by(ACCOUNT.c.id)
        ).scalars()
    ]


def foreign_ids(session: Session, tenant_id: int, ids: Iterable[int]) -> list[int]:
    """The ids that are not non-deleted accounts of ``tenant_id`` (sorted, distinct)."""
    wanted = sorted(set(int(i) for i in ids))
    found: set[int] = set()
    for part in chunks(wanted):
        found.update(
            session.execute(
                select(ACCOUNT.c.id).where(ACCOUNT.c.tenant_id == tenant_id, _LIVE, ACCOUNT.c.id.in_(part))
            ).scalars()
        )
    return [i for i in wanted if i not in found]


def load_credentials(session: Session, account_id: int) -> Credentials | None:
    row = session.execute(
        select(ACCOUNT.c.access_token, ACCOUNT.c.refresh_token, ACCOUNT.c.token_version, ACCOUNT.c.platform_uid)
        .where(ACCOUNT.c.id == account_id, _LIVE)
    ).one_or_none()
    if row is None:
        return None
    return Credentials(row.access_token, row.refresh_token, int(row.token_version), str(row.platform_uid))


def load_credentials_many(session: Session, account_ids: Sequence[int]) -> dict[int, Credentials]:
    """Credentials of many accounts in one query per 500 ids (missing or deleted ones are absent)."""
    found: dict[int, Credentials] = {}
    for part in chunks(sorted(set(account_ids))):
        rows = session.execute(
            select(
                ACCOUNT.c.id, ACCOUNT.c.access_token, ACCOUNT.c.refresh_token,
                ACCOUNT.c.token_version, ACCOUNT.c.platform_uid,
            ).where(ACCOUNT.c.id.in_(part), _LIVE)
        )
        for row in rows:
            found[int(row.id)] = Credentials(
                row.access_token, row.refresh_token, int(row.token_version), str(row.platform_uid)
            )
    return found


def save_credentials(
    session: Session,
    account_id: int,
    access_token: str,
    refresh_token: str,
    expires_at: int | None,
    expected_version: int,
    now: int | None = None,
) -> int:
    """Store refreshed tokens only if nobody else did since ``expected_version``.

    Returns the stored token_version: ``expected_version + 1`` if ours won, else the winner's.
    """
    now = now_or(now)
    session.execute(
        update(ACCOUNT)
        .where(ACCOUNT.c.id == account_id, ACCOUNT.c.token_version == expected_version)
        .values(
            access_token=access_token,
            refresh_token=refresh_token,
            token_expires_at=expires_at,
            token_version=ACCOUNT.c.token_version + 1,
            update_time=now,
        )
    )
    version = session.execute(select(ACCOUNT.c.token_version).where(ACCOUNT.c.id == account_id)).scalar()
    return int(version) if version is not None else expected_version


def record_checks(session: Session, rows: Sequence[tuple[int, str, int]]) -> int:
    """Store liveness results (account_id, status, checked_at): one UPDATE per (status, time) per 500 ids."""
    groups: dict[tuple[str, int], list[int]] = {}
    for account_id, status, checked_at in rows:
        if status not in st.ACCOUNT_STATUSES:
            raise ValueError(f"unknown account status {status!r}")
        groups.setdefault((status, int(checked_at)), []).append(int(account_id))
    changed = 0
    for (status, checked_at), ids in groups.items():
        for part in chunks(ids):
            changed += session.execute(
                update(ACCOUNT)
                .where(ACCOUNT.c.id.in_(part))
                .values(status=status, last_check_time=checked_at, update_time=checked_at)
            ).rowcount
    return changed


def update_profile(
    session: Session,
    account_id: int,
    *,
    nickname: str | None = None,
    avatar_url: str | None = None,
    now: int | None = None,
) -> None:
    values: dict[str, Any] = {"update_time": now_or(now)}
    if nickname is not None:
        values["nickname"] = nickname
    if avatar_url is not None:
        values["avatar_url"] = avatar_url
    session.execute(update(ACCOUNT).where(ACCOUNT.c.id == account_id).values(values))


def upsert_accounts(session: Session, rows: list[dict[str, Any]], now: int | None = None) -> int:
    """Seed accounts (tests, demo): insert, or update the given columns of an existing id."""
    now = now_or(now)
    count = 0
    for row in rows:
        data = {"create_time": now, "update_time": now, **row}
        exists = "id" in data and session.execute(
            select(ACCOUNT.c.id).where(ACCOUNT.c.id == data["id"])
        ).first() is not None
        if exists:
            data.pop("create_time")
            session.execute(update(ACCOUNT).where(ACCOUNT.c.id == data["id"]).values(data))
        else:
            session.execute(ACCOUNT.insert().values(data))
        count += 1
    return count


def tenants_with_accounts(session: Session) -> list[int]:
    return [
        int(t)
        for t in session.execute(select(ACCOUNT.c.tenant_id).where(_LIVE).distinct().order_by(ACCOUNT.c.tenant_id)).scalars()
    ]


def set_profiles(session: Session, column: str, values: dict[int, str], now: int | None = None) -> int:
    """Set ``nickname`` or ``avatar_url`` of many accounts: one UPDATE (a CASE on id) per 500 ids."""
    if column not in ("nickname", "avatar_url"):
        raise ValueError(f"set_profiles: {column!r} is not a profile column")
    now = now_or(now)
    target = ACCOUNT.c[column]
    changed = 0
    ids = sorted(values)
    for part in chunks(ids):
        changed += session.execute(
            update(ACCOUNT)
            .where(ACCOUNT.c.id.in_(part))
            .values({column: case({i: values[i] for i in part}, value=ACCOUNT.c.id, else_=target), "update_time": now})
        ).rowcount
    return changed
