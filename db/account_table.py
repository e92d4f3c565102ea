"""The accounts table as the ``BATCH_ACCOUNT_*`` settings describe it.

A real installation adopts the admin system's own accounts table (its name, its column names,
its status codes); a fresh one gets our default table, created by the migrations. Either way
``accounts_table()`` builds a SQLAlchemy ``Table`` from the settings whose columns carry our
names as keys: ``T.c.platform_uid`` is the table's ``uid`` column when
``BATCH_ACCOUNT_COL_PLATFORM_UID=uid``. An optional column configured as ``""`` is absent
from the Table, so it is never read or written.

``verify`` compares the live table with that description; ``verify_once`` runs it once per
(database, settings) when a process opens the mirror. A mismatch is one ``AccountTableMismatch``
naming the column and the setting to change, raised before anything is written.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchcore.errors import AccountTableMismatch
from batchcore.settings import get_settings
from db import statuses as st
from db.retry import run_transaction

__all__ = [
    "ROLES", "REQUIRED", "AccountSpec", "AccountTable", "DEFAULT_SPEC",
    "accounts_table", "verify", "verify_once", "table_exists",
]

Kind = Literal["int", "str", "uid", "status"]

# Our name of each column (the default table's column name) -> what it must hold.
ROLES: Mapping[str, Kind] = {
    "id": "int",
    "tenant_id": "int",
    "platform_uid": "uid",
    "access_token": "str",
    "refresh_token": "str",
    "status": "status",
    "nickname": "str",
    "avatar_url": "str",
    "token_expires_at": "int",
    "last_check_time": "int",
    "update_time": "int",
    "create_time": "int",
    "delete_time": "int",
    "token_version": "int",
}
REQUIRED = ("id", "tenant_id", "platform_uid", "access_token", "refresh_token", "status")
CHECK_WRITES = (st.ACCOUNT_ALIVE, st.ACCOUNT_BANNED, st.ACCOUNT_RESTRICTED)  # what a liveness check stores

Code = int | str


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """Table name, (role, column) pairs of the configured columns, status codes: hashable."""

    table: str
    columns: tuple[tuple[str, str], ...]
    status_map: tuple[tuple[str, tuple[Code, ...]], ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> AccountSpec:
        columns = tuple((role, str(getattr(settings, f"account_col_{role}")).strip()) for role in ROLES)
        codes = tuple(
            (status, tuple(value) if isinstance(value, list) else (value,))
            for status, value in sorted(settings.account_status_map.items())
        )
        return cls(settings.account_table.strip(), tuple((r, c) for r, c in columns if c), codes)

    @property
    def is_default(self) -> bool:
        """The table our migrations create (same name, columns and status values)."""
        return self == DEFAULT_SPEC


DEFAULT_SPEC = AccountSpec("la_alt_account", tuple((role, role) for role in ROLES))


def setting_for(role: str) -> str:
    return f"BATCH_ACCOUNT_COL_{role.upper()}"


class AccountTable:
    """The Table (columns keyed by our names) and the status codes of one ``AccountSpec``."""

    def __init__(self, spec: AccountSpec) -> None:
        self.spec = spec
        self._write, self._read = _status_codes(spec)
        numeric = all(isinstance(v, int) for v in self._read)
        self.status_kind: Kind = "int" if numeric and self._read else "str"
        columns = dict(spec.columns)
        missing = [r for r in REQUIRED if r not in columns]
        if missing:
            raise AccountTableMismatch(f"{setting_for(missing[0])} is empty: the accounts table needs that column")
        if not spec.table:
            raise AccountTableMismatch("BATCH_ACCOUNT_TABLE is empty")
        seen: dict[str, str] = {}
        for role, name in spec.columns:
            if name.lower() in seen:
                raise AccountTableMismatch(
                    f"{setting_for(seen[name.lower()])} and {setting_for(role)} both name the column {name}"
                )
            seen[name.lower()] = role
        self.table = sa.Table(
            spec.table,
            sa.MetaData(),
            *(
                sa.Column(name, self._sa_type(role), key=role, primary_key=role == "id")
                for role, name in spec.columns
            ),
        )

    def _sa_type(self, role: str) -> sa.types.TypeEngine[Any]:
        kind = ROLES[role]
        if kind == "status":
            kind = self.status_kind
        return sa.Integer() if kind == "int" else sa.Text() if role.endswith("_token") else sa.String(1024)

    def has(self, role: str) -> bool:
        return role in self.table.c

    def stored(self, status: str) -> Code:
        """The value written for one of our statuses."""
        if status not in st.ACCOUNT_STATUSES:
            raise ValueError(f"unknown account status {status!r}")
        try:
            return self._write[status]
        except KeyError:
            raise AccountTableMismatch(f"BATCH_ACCOUNT_STATUS_MAP has no value for {status!r}") from None

    def stored_any(self, statuses: tuple[str, ...]) -> list[Code]:
        """Every stored value that means one of ``statuses`` (for reads)."""
        return [code for code, status in self._read.items() if status in statuses]

    def status_of(self, code: Code | None) -> str:
        """Our status for a stored value; values the mapping does not name read as ``unknown``."""
        return self._read.get(code, st.ACCOUNT_UNKNOWN) if code is not None else st.ACCOUNT_UNKNOWN

    def live(self) -> sa.ColumnElement[bool]:
        """Not soft-deleted: delete_time NULL (or 0, as some panels store it)."""
        if not self.has("delete_time"):
            return sa.true()
        column = self.table.c.delete_time
        return sa.or_(column.is_(None), column == 0)

    def stamp(self, now: int, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` plus update_time when the table has one."""
        return {**values, "update_time": now} if self.has("update_time") else values


def _status_codes(spec: AccountSpec) -> tuple[dict[str, Code], dict[Code, str]]:
    if not spec.status_map:
        same = {s: s for s in st.ACCOUNT_STATUSES}
        return dict(same), dict(same)
    write: dict[str, Code] = {}
    read: dict[Code, str] = {}
    for status, codes in spec.status_map:
        if status not in st.ACCOUNT_STATUSES:
            raise AccountTableMismatch(
                f"BATCH_ACCOUNT_STATUS_MAP: {status!r} is not one of {', '.join(st.ACCOUNT_STATUSES)}"
            )
        if not codes or any(isinstance(c, bool) or not isinstance(c, (int, str)) for c in codes):
            raise AccountTableMismatch(f"BATCH_ACCOUNT_STATUS_MAP: {status!r} needs an integer or string value")
        for code in codes:
            if code in read:
                raise AccountTableMismatch(f"BATCH_ACCOUNT_STATUS_MAP: {code!r} is given for both {read[code]!r} and {status!r}")
            read[code] = status
        write[status] = codes[0]
    if len({type(c) for c in read}) > 1:
        raise AccountTableMismatch("BATCH_ACCOUNT_STATUS_MAP mixes integer and string values")
    for status in CHECK_WRITES:
        if status not in write:
            raise AccountTableMismatch(f"BATCH_ACCOUNT_STATUS_MAP has no value for {status!r} (a liveness check stores it)")
    return write, read


@lru_cache(maxsize=16)
def _table_for(spec: AccountSpec) -> AccountTable:
    return AccountTable(spec)


def accounts_table(settings: Any = None) -> AccountTable:
    """The accounts table of the current settings (cached per distinct description)."""
    if settings is None:
        settings = get_settings()
    return _table_for(AccountSpec.from_settings(settings))


def table_exists(bind: Engine | Connection, name: str) -> bool:
    return sa.inspect(bind).has_table(name)


def verify(bind: Engine | Connection, accounts: AccountTable) -> None:
    """Raise ``AccountTableMismatch`` unless every configured column exists with a usable type."""
    spec = accounts.spec
    inspector = sa.inspect(bind)
    if not inspector.has_table(spec.table):
        hint = "run `python -m db upgrade`" if spec.is_default else "check BATCH_ACCOUNT_TABLE"
        raise AccountTableMismatch(f"the accounts table {spec.table} does not exist; {hint}")
    found = {c["name"].lower(): c["type"] for c in inspector.get_columns(spec.table)}
    for role, name in spec.columns:
        kind = accounts.status_kind if ROLES[role] == "status" else ROLES[role]
        column_type = found.get(name.lower())
        if column_type is None:
            hint = "the table's column that holds it" if role in REQUIRED else 'the right column, or "" if the table has none'
            raise AccountTableMismatch(
                f"the accounts table {spec.table} has no column {name} (set {setting_for(role)} to {hint})"
            )
        if not _compatible(kind, column_type):
            want = {"int": "an integer", "str": "a string", "uid": "a string or integer"}[kind]
            raise AccountTableMismatch(
                f"the accounts table {spec.table}: column {name} ({setting_for(role)}) is {column_type}, "
                f"expected {want} column" + (" (see BATCH_ACCOUNT_STATUS_MAP)" if role == "status" else "")
            )


def _compatible(kind: Kind, column_type: sa.types.TypeEngine[Any]) -> bool:
    integer = isinstance(column_type, sa.Integer)
    string = isinstance(column_type, sa.String)
    return {"int": integer, "str": string, "uid": integer or string}.get(kind, False)


_verified: set[tuple[sa.URL, AccountSpec]] = set()
_verified_lock = threading.Lock()


def verify_once(engine: Engine, accounts: AccountTable | None = None) -> None:
    """``verify`` on the first use of (database, settings) in this process; later calls are free."""
    accounts = accounts or accounts_table()
    key = (engine.url, accounts.spec)
    if key in _verified:
        return
    # In a transaction of its own, retried like any other: a process's first statement may meet
    # a connection the server dropped ("MySQL server has gone away").
    run_transaction(engine, lambda session: verify(session.connection(), accounts))
    with _verified_lock:
        _verified.add(key)
