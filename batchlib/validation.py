"""Checks shared by the batch types' ``parse`` functions. Each raises ``InvalidInput``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from batchlib.errors import ForeignAccounts, InvalidItems, UnknownTenant

__all__ = ["positive_int", "check_tenant", "account_ids_from", "items_from", "check_accounts"]

MAX_ID = 2**31 - 1  # int(11) columns


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise InvalidItems(f"{what} must be a positive integer, got {value!r:.60}")
    if not 0 < value <= MAX_ID:
        raise InvalidItems(f"{what} must be between 1 and {MAX_ID}, got {value}")
    return value


def check_tenant(session: Session, tenant_id: Any) -> int:
    from db import tenant_exists

    tenant = positive_int(tenant_id, "tenant id")
    if not tenant_exists(session, tenant):
        raise UnknownTenant(tenant)
    return tenant


def _unique(ids: Sequence[int], what: str) -> None:
    seen: set[int] = set()
    dupes = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if dupes:
        shown = ", ".join(map(str, dupes[:10]))
        raise InvalidItems(f"duplicate {what}: {shown}{' ...' if len(dupes) > 10 else ''}")


def account_ids_from(raw: Any, *, max_items: int) -> list[int]:
    """A non-empty list of distinct positive account ids."""
    if not isinstance(raw, (list, tuple)):
        raise InvalidItems(f"account_ids must be a list of ids, got {type(raw).__name__}")
    if not raw:
        raise InvalidItems("account_ids is empty: give at least one account id, or omit it for all accounts")
    if len(raw) > max_items:
        raise InvalidItems(f"too many items: {len(raw)} (at most {max_items} per batch)")
    ids = [positive_int(v, "account id") for v in raw]
    _unique(ids, "account ids")
    return ids


def items_from(raw: Any, *, max_items: int, key: str = "account_id") -> list[Mapping[str, Any]]:
    """A non-empty list of objects, each with a distinct positive ``key``."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise InvalidItems("items must be a non-empty list of objects")
    if len(raw) > max_items:
        raise InvalidItems(f"too many items: {len(raw)} (at most {max_items} per batch)")
    for n, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise InvalidItems(f"item {n} must be an object, got {type(item).__name__}")
        if key not in item:
            raise InvalidItems(f"item {n} has no {key}")
    _unique([positive_int(item[key], f"item {n} {key}") for n, item in enumerate(raw)], key + "s")
    return list(raw)


def check_accounts(session: Session, tenant_id: int, ids: Sequence[int]) -> None:
    from db import foreign_ids

    foreign = foreign_ids(session, tenant_id, ids)
    if foreign:
        raise ForeignAccounts(tenant_id, foreign)
