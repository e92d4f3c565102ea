"""Read an accounts file (CSV or JSON) for ``python -m db import-accounts``: every row checked first.

CSV: a header row, then one account per row. JSON: a list of objects. Columns:

    tenant_id, platform_uid, access_token, refresh_token     required
    nickname, avatar_url, token_expires_at, status, id         optional (empty CSV cell = not given)

Any other column, a duplicate (tenant_id, platform_uid) or id, a value of the wrong type or
size, a NUL byte, text that is not UTF-8: ``InvalidItems`` naming the row, and nothing is
imported. The simulator reads the same files (``--accounts-file``), so the imported tokens work.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from batchcore.errors import InvalidItems

__all__ = ["FIELDS", "REQUIRED", "read_accounts_file"]

REQUIRED = ("tenant_id", "platform_uid", "access_token", "refresh_token")
FIELDS = (*REQUIRED, "nickname", "avatar_url", "token_expires_at", "status", "id")
STATUSES = ("alive", "banned", "restricted", "unknown", "disabled")
INT_MAX = 2**31 - 1
LIMITS = {"platform_uid": 64, "access_token": 4096, "refresh_token": 4096, "nickname": 255, "avatar_url": 1024}
MAX_ROWS = 1_000_000


def read_accounts_file(path: str | Path) -> list[dict[str, Any]]:
    """The checked rows of a CSV or JSON file, keys from ``FIELDS`` (absent: not given)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InvalidItems(f"{path.name}: expected a .csv or .json file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InvalidItems(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise InvalidItems(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    raw = _csv_rows(text) if suffix == ".csv" else _json_rows(text)
    if not raw:
        raise InvalidItems(f"{path.name}: no accounts in the file")
    if len(raw) > MAX_ROWS:
        raise InvalidItems(f"{path.name}: {len(raw)} accounts, at most {MAX_ROWS:,} per file")
    rows = [_checked(n, row) for n, row in enumerate(raw, start=1)]
    _no_duplicates(rows)
    return rows


def _csv_rows(text: str) -> list[dict[str, Any]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        rows = list(reader)
    except csv.Error as exc:
        raise InvalidItems(f"not a readable CSV file ({exc})") from None
    header = reader.fieldnames or []
    if not header:
        raise InvalidItems("the CSV file has no header row")
    if len(set(header)) != len(header):
        raise InvalidItems("the CSV header names a column twice")
    result = []
    for n, row in enumerate(rows, start=1):
        if None in row or any(v is None for v in row.values()):
            raise InvalidItems(f"row {n}: {len(header)} columns expected")
        result.append({k: v for k, v in row.items() if v != ""})
    return result


def _json_rows(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidItems("the JSON file is nested too deeply") from None
    except ValueError as exc:
        raise InvalidItems(f"not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(data, list):
        raise InvalidItems("the JSON file must hold a list of account objects")
    for n, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InvalidItems(f"row {n}: an account is a JSON object")
    return [{k: v for k, v in row.items() if v is not None} for row in data]


def _checked(n: int, row: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(row) - set(FIELDS), key=str)
    if unknown:
        raise InvalidItems(f"row {n}: unknown column {str(unknown[0])[:50]!r} (columns: {', '.join(FIELDS)})")
    for name in REQUIRED:
        if name not in row:
            raise InvalidItems(f"row {n}: {name} is missing")
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("tenant_id", "id", "token_expires_at"):
            out[name] = _integer(n, name, value, minimum=0 if name == "token_expires_at" else 1)
        else:
            out[name] = _text(n, name, value)
    if "status" in out and out["status"] not in STATUSES:
        raise InvalidItems(f"row {n}: status must be one of {', '.join(STATUSES)}")
    return out


def _integer(n: int, name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) <= 12:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= INT_MAX:
        raise InvalidItems(f"row {n}: {name} must be an integer from {minimum} to {INT_MAX}")
    return value


def _text(n: int, name: str, value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "platform_uid":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidItems(f"row {n}: {name} must be a non-empty string")
    if "\x00" in value:
        raise InvalidItems(f"row {n}: {name} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidItems(f"row {n}: {name} is not valid Unicode (a lone surrogate)") from None
    limit = LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise InvalidItems(f"row {n}: {name} is longer than {limit} characters")
    return value


def _no_duplicates(rows: list[dict[str, Any]]) -> None:
    keys: dict[tuple[int, str], int] = {}
    ids: dict[int, int] = {}
    for n, row in enumerate(rows, start=1):
        key = (row["tenant_id"], row["platform_uid"])
        if key in keys:
            raise InvalidItems(f"row {n}: tenant {key[0]} account {key[1]!r} is also in row {keys[key]}")
        keys[key] = n
        if "id" in row:
            if row["id"] in ids:
                raise InvalidItems(f"row {n}: id {row['id']} is also in row {ids[row['id']]}")
            ids[row["id"]] = n
