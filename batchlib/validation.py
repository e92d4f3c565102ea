"""Checks shared by the batch types' ``parse`` functions. Each raises ``InvalidInput``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from batchcore.errors import ForeignAccounts, InvalidItems, UnknownTenant
from db import foreign_ids, tenant_exists

__all__ = [
    "positive_int", "check_tenant", "account_ids_from", "items_from", "check_accounts",
    "account_items", "check_nickname", "check_avatar_url", "check_friend_uid", "check_task_name", "check_admin_id",
]

MAX_ID = 2**31 - 1  # int(11) columns


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise InvalidItems(f"{what} must be a positive integer, got {value!r:.60}")
    if not 0 < value <= MAX_ID:
        raise InvalidItems(f"{what} must be between 1 and {MAX_ID}, got {_shown(value)}")
    return value


def _shown(number: int) -> str:
    return str(number) if abs(number) < 10**30 else "a number of more than 30 digits"


TASK_NAME_MAX = 255  # la_batch_task.task_name is varchar(255)


def check_task_name(value: Any) -> str | None:
    """None or "" (a default name is used) or text of at most 255 characters, without NUL or surrogates."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidItems(f"task name must be text, got {type(value).__name__}")
    if len(value) > TASK_NAME_MAX:
        raise InvalidItems(f"task name is {len(value)} characters long (at most {TASK_NAME_MAX})")
    if not value.strip():
        raise InvalidItems("task name is empty")
    bad = next((c for c in value if c == "\x00" or "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise InvalidItems(f"task name contains the character U+{ord(bad):04X}, which cannot be stored")
    return value


def check_admin_id(value: Any) -> int:
    """create_admin_id: 0 (none) up to 2^31-1, as la_batch_task.create_admin_id holds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidItems(f"admin id must be an integer, got {value!r:.60}")
    if not 0 <= value <= MAX_ID:
        raise InvalidItems(f"admin id must be between 0 and {MAX_ID}, got {_shown(value)}")
    return value


def check_tenant(session: Session, tenant_id: Any) -> int:
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
    foreign = foreign_ids(session, tenant_id, ids)
    if foreign:
        raise ForeignAccounts(tenant_id, foreign)


# -- items of the per-account types: {"items": [{"account_id": n, <field>: value}, ...]} ----------

MAX_SHOWN = 10


def account_items(
    session: Session,
    tenant_id: Any,
    task_data: Mapping[str, Any],
    *,
    field: str,
    check: Callable[[Any], Any],
    max_items: int,
) -> list[tuple[int, dict[str, Any]]]:
    """One item per account of the tenant, each with a valid ``field``; read-only.

    ``check(value)`` returns the value to use or raises ``ValueError`` with the reason. Every
    problem is collected and the first ten are reported together; a key other than
    ``account_id`` and ``field`` is a problem too (refused, never ignored).
    Item data keeps ``{"account_id", field}`` (what the admin panel shows).
    """
    tenant = check_tenant(session, tenant_id)
    raw = task_data.get("items")
    if raw is None:
        raise InvalidItems(f'task_data needs "items": [{{"account_id": ..., "{field}": ...}}, ...]')
    items = items_from(raw, max_items=max_items)
    problems: list[str] = []
    parsed: list[tuple[int, dict[str, Any]]] = []
    for n, item in enumerate(items):
        account_id = positive_int(item["account_id"], f"item {n} account_id")
        where = f"item {n} (account {account_id})"
        unknown = sorted(k for k in item if k not in ("account_id", field))
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(repr(str(k)[:40]) for k in unknown[:3])}")
            continue
        if field not in item:
            problems.append(f"{where}: no {field}")
            continue
        try:
            value = check(item[field])
        except ValueError as exc:
            problems.append(f"{where}: {field} {exc}")
            continue
        parsed.append((account_id, {"account_id": account_id, field: value}))
    if problems:
        more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
        raise InvalidItems(f"{len(problems)} invalid item(s): " + "; ".join(problems[:MAX_SHOWN]) + more)
    check_accounts(session, tenant, [i for i, _ in parsed])
    return parsed


NICKNAME_MAX = 32  # the platform's limit (docs/platform-api.md)
AVATAR_URL_MAX = 512
FRIEND_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")


def check_nickname(value: Any) -> str:
    """1-32 printable characters (no control, format or separator characters but the plain
    space), without leading or trailing spaces."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError("is empty")
    if len(value) > NICKNAME_MAX:
        raise ValueError(f"is {len(value)} characters long (at most {NICKNAME_MAX})")
    if value != value.strip():
        raise ValueError("has leading or trailing spaces")
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"contains the non-printable character U+{ord(bad):04X}")
    return value


def check_avatar_url(value: Any) -> str:
    """An absolute http(s) URL with a host, no credentials, no spaces, at most 512 characters."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if len(value) > AVATAR_URL_MAX:
        raise ValueError(f"is {len(value)} characters long (at most {AVATAR_URL_MAX})")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError("contains spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"is not a valid URL: {value[:80]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {value[:80]!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@)")
    return value


def check_friend_uid(value: Any) -> str:
    """A platform uid: 1-64 characters of letters, digits and ``_ . : @ -``, starting alphanumeric."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__}")
    if not FRIEND_UID_RE.fullmatch(value):
        raise ValueError(f"is not a platform uid (1-64 letters, digits, _ . : @ -): {value[:80]!r}")
    return value
