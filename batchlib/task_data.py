"""Reading untrusted batch input: task_data text, item files, flow parameters.

Every entry point (the dispatcher, a run's first steps, the command lines, the staging command)
decodes and checks input here, so a hostile value is refused the same way everywhere: an
``InvalidItems`` whose message is one line, before anything is written.

What is refused, and why:

- bytes that are not UTF-8, text longer than the limit (``TASK_DATA_MAX_BYTES`` for a row,
  ``ITEMS_FILE_MAX_BYTES`` for a file);
- JSON nested deeper than ``MAX_DEPTH`` (counted without parsing, so a 30,000-deep value is
  refused without a RecursionError anywhere);
- ``NaN`` / ``Infinity``, numbers with more than ``MAX_INT_DIGITS`` digits, duplicate keys;
- strings holding a NUL character or a lone surrogate (neither can be stored nor sent);
- a ``task_data`` that is not an object, or whose keys the batch type does not declare
  (``{"acount_ids": [1]}`` is refused, never read as "every account"), or whose values have
  the wrong JSON type.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from batchcore.errors import InvalidInput, InvalidItems
from batchcore.json_text import (
    ITEM_DATA_MAX_BYTES,
    ITEMS_FILE_MAX_BYTES,
    TASK_DATA_MAX_BYTES,
    check_value,
    decode_json,
    json_type,
)
from batchcore.settings import Settings
from batchlib.batch_types import BatchType, Item, get_batch_type
from batchlib.validation import check_admin_id, check_task_name

__all__ = [
    "SUMMARY_KEYS", "RETRY_KEYS", "check_task_data", "decode_task_data", "task_data_problem",
    "read_items_file", "items_from_file", "summary", "fits_column", "staged_request", "unstaged_request", "validate_request", "request_items",
]

# Keys a task_data may hold besides its type's inputs: the summary of items staged as detail
# rows (``items_count`` must then match them) and where they came from.
SUMMARY_KEYS: dict[str, type] = {"items_count": int, "source": str}
# A retry of the failed items of another batch (``{"retry_failed_of": 42}``), for every type
# whose items are its detail rows (not a type that collects them itself, such as pin_sync).
RETRY_KEYS: dict[str, type] = {"retry_failed_of": int}


def check_task_data(data: Any, batch_type: BatchType) -> dict[str, Any] | None:
    """``data`` as a task_data of ``batch_type``: None (no input) or an object whose keys are the
    type's ``inputs`` (or ``SUMMARY_KEYS`` when it can stage items, ``RETRY_KEYS`` when its items
    are detail rows), each of the declared JSON type or null."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidItems(f"task_data must be a JSON object, got {json_type(data)}")
    allowed = {
        **batch_type.inputs,
        **(SUMMARY_KEYS if batch_type.staged_as else {}),
        **(RETRY_KEYS if batch_type.collect is None else {}),
    }
    unknown = sorted(k for k in data if k not in allowed)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        expected = ", ".join(sorted(allowed)) or "no keys"
        raise InvalidItems(f"unknown key(s) {shown} in task_data: {batch_type.name} takes {expected}")
    for key, value in data.items():
        want = allowed[key]
        if value is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise InvalidItems(f"task_data {key} must be a {json_type(want())}, got {json_type(value)}")
    check_value(data, "task_data")
    return data


def decode_task_data(raw: str | bytes | None, batch_type: BatchType) -> dict[str, Any] | None:
    """A row's task_data text: None when empty or JSON null; otherwise a checked object."""
    if raw is None or (raw.strip() if isinstance(raw, str) else bytes(raw).strip()) in ("", b""):
        return None
    return check_task_data(decode_json(raw, what="task_data", max_bytes=TASK_DATA_MAX_BYTES), batch_type)


def task_data_problem(task_type: str, raw: str | bytes | None) -> str | None:
    """Why a row's task_data cannot run as ``task_type``, in one line for the panel; None if fine."""
    try:
        decode_task_data(raw, get_batch_type(task_type))
    except InvalidInput as exc:
        return f"invalid task_data: {exc}"
    return None


def fits_column(data: Any) -> bool:
    """Whether ``data`` as JSON text fits la_batch_task.task_data (as the mirror stores it)."""
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()) <= TASK_DATA_MAX_BYTES


def summary(items_count: int, source: str) -> dict[str, Any]:
    """What task_data keeps when the items live in the detail rows."""
    return {"items_count": items_count, "source": source[:200]}


# -- item files ------------------------------------------------------------------------------


def read_items_file(path: str | Path, *, columns: tuple[str, ...]) -> list[Any]:
    """The items of a JSON or CSV file.

    JSON: a list (of objects, or of ids when ``columns`` is just ``("account_id",)``), or an
    object with that list under ``items``/``account_ids``. CSV: a header line naming ``columns``
    (in any order), then one item per line; a file of bare ids (one per line, no header) is read
    as ``account_id`` values when that is the only column. Nothing of the file's content is
    echoed in a refusal but positions and column names.
    """
    name = Path(path).name
    try:
        with open(path, "rb") as fh:
            raw = fh.read(ITEMS_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise InvalidItems(f"cannot read the items file {name}: {exc.strerror or type(exc).__name__}") from None
    what = f"the items file {name}"
    if len(raw) > ITEMS_FILE_MAX_BYTES:
        raise InvalidItems(f"{what} is larger than {ITEMS_FILE_MAX_BYTES} bytes")
    head = raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head in (b"[", b"{"):
        value = decode_json(raw, what=what, max_bytes=ITEMS_FILE_MAX_BYTES)
        if isinstance(value, dict):
            keys = [k for k in ("items", "account_ids") if k in value]
            if len(value) != 1 or not keys:
                raise InvalidItems(f"{what}: expected a JSON list, or an object with only \"items\" or \"account_ids\"")
            value = value[keys[0]]
        if not isinstance(value, list):
            raise InvalidItems(f"{what}: expected a JSON list of items, got {json_type(value)}")
        return value
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidItems(f"{what} is not UTF-8 text (byte {exc.start})") from None
    return _csv_items(text, columns, what)


def items_from_file(settings: Settings, batch_type: BatchType, path: str) -> list[Any]:
    """The items of ``path`` for ``batch_type``; with ``settings.items_dir`` set (on workers), the
    file must be inside that folder, so a run parameter cannot make a worker read any file."""
    if batch_type.staged_as is None:
        raise InvalidItems(f"{batch_type.name} takes no items file")
    if settings.items_dir:
        root = os.path.realpath(settings.items_dir)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise InvalidItems(f"the items file must be inside {settings.items_dir} (BATCH_ITEMS_DIR) on this host")
    return read_items_file(path, columns=batch_type.item_keys)


def _csv_items(text: str, columns: tuple[str, ...], what: str) -> list[Any]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise InvalidItems(f"{what} is not valid CSV ({exc})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InvalidItems(f"{what} holds no items")
    header = [cell.strip() for cell in rows[0]]
    if columns == ("account_id",) and header and header[0].strip().isdigit():
        ids = []
        for n, row in enumerate(rows, 1):
            if len(row) != 1:
                raise InvalidItems(f"{what} line {n}: expected one account id per line")
            ids.append(row[0].strip())
        return ids
    if sorted(header) != sorted(columns):
        raise InvalidItems(f"{what}: the first line must be the CSV header {','.join(columns)}")
    items = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise InvalidItems(f"{what} line {n}: expected {len(header)} values, got {len(row)}")
        items.append(dict(zip(header, row)))
    check_value(items, what)
    if columns == ("account_id",):
        return [item["account_id"].strip() for item in items]
    return items


# -- staged items (detail rows written before the run) ------------------------------------------


def staged_request(batch_type: BatchType, task_data: dict[str, Any] | None, rows: list[tuple[int, str | None]]) -> dict[str, Any]:
    """The request a batch with staged detail rows stands for, to validate with the type's ``parse``.

    ``rows`` are (item_id, item_data text). ``items`` rows: item_data is an item object whose
    ``account_id`` (if given) equals item_id. ``account_ids`` rows: item_data is NULL. The
    task_data may only summarise them (``items_count`` must then equal the number of rows).
    """
    where = f"{len(rows)} detail rows are staged"
    if batch_type.staged_as is None:
        raise InvalidItems(f"{where}, but {batch_type.name} takes no staged items")
    data = task_data or {}
    if data.get(batch_type.staged_as) is not None:
        raise InvalidItems(f"task_data has {batch_type.staged_as} and {where}: give the items one way only")
    count = data.get("items_count")
    if count is not None and count != len(rows):
        raise InvalidItems(
            f"task_data says items_count {count} but {where}: insert the batch row and its detail rows "
            "in one transaction"
        )
    if batch_type.staged_as == "account_ids":
        for item_id, text in rows:
            if text is not None and text.strip() not in ("", "null"):
                raise InvalidItems(f"item_data of item {item_id} must be NULL for {batch_type.name}")
        return {"account_ids": [item_id for item_id, _ in rows]}
    items = []
    for item_id, text in rows:
        what = f"item_data of item {item_id}"
        item = decode_json(text or "null", what=what, max_bytes=ITEM_DATA_MAX_BYTES)
        if not isinstance(item, dict):
            raise InvalidItems(f"{what} must be a JSON object, got {json_type(item)}")
        if item.setdefault("account_id", item_id) != item_id:
            raise InvalidItems(f"{what} names account_id {str(item['account_id'])[:20]}: item_id must be the account id")
        items.append(item)
    return {"items": items}


def validate_request(
    session: Session,
    batch_type: BatchType,
    tenant_id: Any,
    task_data: dict[str, Any] | None,
    settings: Settings,
    *,
    task_name: Any = None,
    create_admin_id: Any = 0,
) -> list[Item] | Select[tuple[int]]:
    """Everything a new batch is checked for, read-only; its items (``request_items``). The run
    does this before it writes anything, and the command lines before they create a flow run
    (one-line refusals)."""
    check_task_data(task_data, batch_type)
    check_task_name(task_name)
    check_admin_id(create_admin_id)
    return request_items(session, batch_type, tenant_id, unstaged_request(task_data), settings)


def request_items(
    session: Session, batch_type: BatchType, tenant_id: Any, request: Mapping[str, Any], settings: Settings
) -> list[Item] | Select[tuple[int]]:
    """The items of a request: the type's ``item_query`` when it has one for this request (a
    SELECT of item ids that selects at least one row; ``[]`` when it selects none), else the
    list ``parse`` returns. Both validate the request the same way."""
    if batch_type.item_query is not None:
        query = batch_type.item_query(session, tenant_id, request, settings)
        if query is not None:
            return query if session.execute(query.limit(1)).first() is not None else []
    return batch_type.parse(session, tenant_id, request, settings)


def unstaged_request(task_data: dict[str, Any] | None) -> dict[str, Any]:
    """task_data of a batch without detail rows: a summary without its rows is refused (it would
    otherwise read as "no items given", i.e. every account)."""
    data = task_data or {}
    summarised = sorted(k for k in SUMMARY_KEYS if data.get(k) is not None)
    if summarised:
        raise InvalidItems(
            f"task_data has {', '.join(summarised)} (a summary of staged items) but no detail rows are staged"
        )
    return data
