"""Repository of the accounts table (caller owns the transaction). Tokens never reach repr or logs.

The table is the one the ``BATCH_ACCOUNT_*`` settings describe (``db.account_table``): the
admin system's own or our default one. Optional columns it lacks are neither read nor written;
statuses are stored through the configured status codes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, bindparam, case, select, update
from sqlalchemy.orm import Session

from batchcore.errors import InvalidItems
from db import statuses as st
from db._util import chunks, now_or
from db.account_table import AccountTable, accounts_table

__all__ = [
    "StoredTokens", "tenant_exists", "active_accounts_query", "active_account_ids", "foreign_ids", "load_credentials",
    "load_credentials_many", "save_credentials", "record_checks", "update_profile", "set_profiles", "upsert_accounts",
    "tenants_with_accounts", "import_accounts", "IMPORT_FIELDS",
]


@dataclass(frozen=True, slots=True)
class StoredTokens:
    """An account's row as stored (tokens may be NULL); the platform client works with
    ``batchlib.platform_client.Credentials``, which ``batchlib.token_store`` builds from it."""

    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    platform_uid: str


def _accounts() -> AccountTable:
    return accounts_table()


def tenant_exists(session: Session, tenant_id: int) -> bool:
    """A tenant exists when it has at least one non-deleted account."""
    a = _accounts()
    T = a.table
    return session.execute(select(T.c.id).where(T.c.tenant_id == tenant_id, a.live()).limit(1)).first() is not None


def active_accounts_query(tenant_id: int) -> Select[tuple[int]]:
    """``SELECT id`` of the tenant's usable accounts (not banned, not disabled, not deleted):
    what ``active_account_ids`` reads, and what a batch's detail rows can be inserted from
    (``db.mirror.add_details_from``) without the ids leaving the database."""
    a = _accounts()
    T = a.table
    inactive = a.stored_any(st.ACCOUNT_INACTIVE)
    usable = T.c.status.is_(None) | T.c.status.not_in(inactive) if inactive else T.c.id.is_not(None)
    return select(T.c.id).where(T.c.tenant_id == tenant_id, a.live(), usable)


def active_account_ids(session: Session, tenant_id: int) -> list[int]:
    """Ids of the tenant's usable accounts (not banned, not disabled, not deleted)."""
    query = active_accounts_query(tenant_id)
    return [int(i) for i in session.execute(query.order_by(query.selected_columns[0])).scalars()]


def foreign_ids(session: Session, tenant_id: int, ids: Iterable[int]) -> list[int]:
    """The ids that are not non-deleted accounts of ``tenant_id`` (sorted, distinct)."""
    a = _accounts()
    T = a.table
    wanted = sorted(set(int(i) for i in ids))
    found: set[int] = set()
    for part in chunks(wanted):
        found.update(
            session.execute(select(T.c.id).where(T.c.tenant_id == tenant_id, a.live(), T.c.id.in_(part))).scalars()
        )
    return [i for i in wanted if i not in found]


def _credential_columns(T):
    return (
        T.c.id.label("id"), T.c.access_token.label("access_token"),
        T.c.refresh_token.label("refresh_token"), T.c.platform_uid.label("platform_uid"),
    )


def _credentials(row) -> StoredTokens:
    return StoredTokens(row.access_token, row.refresh_token, str(row.platform_uid))


def load_credentials(session: Session, account_id: int) -> StoredTokens | None:
    a = _accounts()
    row = session.execute(
        select(*_credential_columns(a.table)).where(a.table.c.id == account_id, a.live())
    ).one_or_none()
    return None if row is None else _credentials(row)


def load_credentials_many(session: Session, account_ids: Sequence[int]) -> dict[int, StoredTokens]:
    """The stored tokens of many accounts in one query per 500 ids (missing or deleted ones are absent)."""
    a = _accounts()
    found: dict[int, StoredTokens] = {}
    for part in chunks(sorted(set(account_ids))):
        rows = session.execute(select(*_credential_columns(a.table)).where(a.table.c.id.in_(part), a.live()))
        for row in rows:
            found[int(row.id)] = _credentials(row)
    return found


def save_credentials(
    session: Session,
    account_id: int,
    access_token: str,
    refresh_token: str,
    expires_at: int | None,
    *,
    previous_refresh: str | None,
    now: int | None = None,
) -> bool:
    """Compare-and-set: store the new pair only if the row still holds ``previous_refresh``.

    The admin system refreshes the same accounts itself; when it (or another worker) wrote a
    new pair since we read ours, the row is left alone and False is returned: re-read it.
    Needs no column of our own on the table (token_version is bumped only where it exists).
    """
    a = _accounts()
    T = a.table
    values: dict[str, Any] = {"access_token": access_token, "refresh_token": refresh_token}
    if a.has("token_expires_at"):
        values["token_expires_at"] = expires_at
    if a.has("token_version"):
        values["token_version"] = T.c.token_version + 1
    guard = T.c.refresh_token.is_(None) if previous_refresh is None else T.c.refresh_token == previous_refresh
    moved = session.execute(
        update(T).where(T.c.id == account_id, guard).values(a.stamp(now_or(now), values))
    ).rowcount
    return moved == 1


def record_checks(session: Session, rows: Sequence[tuple[int, str, int]]) -> int:
    """Store liveness results (account_id, status, checked_at): one UPDATE per (status, time) per 500 ids."""
    a = _accounts()
    T = a.table
    groups: dict[tuple[str, int], list[int]] = {}
    for account_id, status, checked_at in rows:
        if status not in st.ACCOUNT_STATUSES:
            raise ValueError(f"unknown account status {status!r}")
        groups.setdefault((status, int(checked_at)), []).append(int(account_id))
    changed = 0
    for (status, checked_at), ids in groups.items():
        values: dict[str, Any] = {"status": a.stored(status)}
        if a.has("last_check_time"):
            values["last_check_time"] = checked_at
        for part in chunks(ids):
            changed += session.execute(
                update(T).where(T.c.id.in_(part)).values(a.stamp(checked_at, values))
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
    a = _accounts()
    values = {k: v for k, v in (("nickname", nickname), ("avatar_url", avatar_url)) if v is not None and a.has(k)}
    if values:
        session.execute(update(a.table).where(a.table.c.id == account_id).values(a.stamp(now_or(now), values)))


def _row_values(a: AccountTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """The keys the table has; statuses through the status codes."""
    data = {k: v for k, v in row.items() if a.has(k)}
    if isinstance(data.get("status"), str) and data["status"] in st.ACCOUNT_STATUSES:
        data["status"] = a.stored(data["status"])
    return data


def upsert_accounts(session: Session, rows: list[dict[str, Any]], now: int | None = None) -> int:
    """Seed accounts (tests, demo): insert, or update the given columns of an existing id."""
    a = _accounts()
    T = a.table
    now = now_or(now)
    count = 0
    for row in rows:
        data = _row_values(a, {"create_time": now, "update_time": now, **row})
        exists = "id" in data and session.execute(select(T.c.id).where(T.c.id == data["id"])).first() is not None
        if exists:
            data.pop("create_time", None)
            session.execute(update(T).where(T.c.id == data["id"]).values(data))
        else:
            session.execute(T.insert().values(data))
        count += 1
    return count


def tenants_with_accounts(session: Session) -> list[int]:
    a = _accounts()
    T = a.table
    return [
        int(t)
        for t in session.execute(select(T.c.tenant_id).where(a.live()).distinct().order_by(T.c.tenant_id)).scalars()
    ]


def set_profiles(session: Session, column: str, values: dict[int, str], now: int | None = None) -> int:
    """Set ``nickname`` or ``avatar_url`` of many accounts: one UPDATE (a CASE on id) per 500 ids.

    A table without that column (``BATCH_ACCOUNT_COL_...=""``) is left alone: 0 rows.
    """
    if column not in ("nickname", "avatar_url"):
        raise ValueError(f"set_profiles: {column!r} is not a profile column")
    a = _accounts()
    if not a.has(column):
        return 0
    T = a.table
    now = now_or(now)
    target = T.c[column]
    changed = 0
    ids = sorted(values)
    for part in chunks(ids):
        changed += session.execute(
            update(T)
            .where(T.c.id.in_(part))
            .values(a.stamp(now, {column: case({i: values[i] for i in part}, value=T.c.id, else_=target)}))
        ).rowcount
    return changed


IMPORT_FIELDS = (
    "id", "tenant_id", "platform_uid", "access_token", "refresh_token",
    "nickname", "avatar_url", "token_expires_at", "status",
)
_KEY_FIELDS = ("id", "tenant_id", "platform_uid")


def import_accounts(session: Session, rows: Sequence[Mapping[str, Any]], now: int | None = None) -> list[int]:
    """Insert or update accounts keyed by (tenant_id, platform_uid); returns their ids in row order.

    ``rows`` are checked already (``batchcore.account_file``): keys from ``IMPORT_FIELDS``, no
    two rows with the same key. An existing account gets the given columns (and is no longer
    soft-deleted); a new one is inserted, with its ``id`` if given, status ``unknown`` if not.
    Raises ``InvalidItems`` before any write when a given id belongs to another account.
    """
    a = _accounts()
    T = a.table
    now = now_or(now)
    existing = _ids_by_key(session, a, rows)
    fresh = [r for r in rows if (int(r["tenant_id"]), str(r["platform_uid"])) not in existing]
    wanted_ids = [int(r["id"]) for r in fresh if r.get("id") is not None]
    for part in chunks(wanted_ids):
        taken = session.execute(select(T.c.id).where(T.c.id.in_(part)).limit(1)).scalar()
        if taken is not None:
            raise InvalidItems(f"id {taken} already belongs to another account; nothing was imported")
    updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (int(row["tenant_id"]), str(row["platform_uid"]))
        if key in existing:
            values = _row_values(a, {k: v for k, v in row.items() if k not in _KEY_FIELDS})
            if a.has("delete_time"):
                values["delete_time"] = None
            values = a.stamp(now, values)
            updates.setdefault(tuple(sorted(values)), []).append({"_id": existing[key], **values})
    for columns, params in updates.items():
        stmt = update(T).where(T.c.id == bindparam("_id")).values({c: bindparam(f"v_{c}") for c in columns})
        session.execute(stmt, [{"_id": p["_id"], **{f"v_{c}": p[c] for c in columns}} for p in params])
    inserts: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in fresh:
        values = _row_values(a, {"status": st.ACCOUNT_UNKNOWN, "create_time": now, "update_time": now, **row})
        inserts.setdefault(tuple(sorted(values)), []).append(values)
    for group in inserts.values():
        session.execute(T.insert(), group)
    found = _ids_by_key(session, a, rows)
    return [found[(int(r["tenant_id"]), str(r["platform_uid"]))] for r in rows]


def _ids_by_key(session: Session, a: AccountTable, rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], int]:
    """(tenant_id, platform_uid) -> id of the accounts that already exist, one query per tenant and 500 uids."""
    T = a.table
    by_tenant: dict[int, list[str]] = {}
    for row in rows:
        by_tenant.setdefault(int(row["tenant_id"]), []).append(str(row["platform_uid"]))
    found: dict[tuple[int, str], int] = {}
    for tenant_id, uids in by_tenant.items():
        for part in chunks(uids):
            query = select(T.c.id.label("id"), T.c.platform_uid.label("uid")).where(
                T.c.tenant_id == tenant_id, T.c.platform_uid.in_(part)
            )
            for row in session.execute(query):
                found[(tenant_id, str(row.uid))] = int(row.id)
    return found
