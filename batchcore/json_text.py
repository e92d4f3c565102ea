"""Reading untrusted JSON text: the limits every batch input is held to.

``decode_json`` parses text or UTF-8 bytes under a size bound, a nesting bound counted without
parsing (a 30,000-deep value is refused without a RecursionError anywhere), no ``NaN`` /
``Infinity``, no number longer than ``MAX_INT_DIGITS`` digits, no duplicate keys, and no NUL or
lone surrogate in a string; each refusal is an ``InvalidItems`` of one line. Below ``db``: the
mirror reads a row's task_data with it, and ``batchlib.task_data`` checks the result against the
batch type.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from batchcore.errors import InvalidItems

__all__ = [
    "TASK_DATA_MAX_BYTES", "ITEM_DATA_MAX_BYTES", "ITEMS_FILE_MAX_BYTES", "MAX_DEPTH", "MAX_INT_DIGITS",
    "decode_json", "check_value", "json_type",
]

TASK_DATA_MAX_BYTES = 65_535  # la_batch_task.task_data is TEXT
ITEM_DATA_MAX_BYTES = 65_535  # la_batch_task_detail.item_data is TEXT
ITEMS_FILE_MAX_BYTES = 64 * 1024 * 1024  # 100,000 items of a few hundred bytes each fit easily
MAX_DEPTH = 16  # task_data needs 3 levels ({"items": [{...}]}); files 2
MAX_INT_DIGITS = 19

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.S)
_INNERMOST = re.compile(r"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
_BRACKETS = re.compile(r"[\[\]{}]")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_BAD_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])", re.I)  # NUL, or a surrogate (paired or not)


def _too_deep(text: str) -> bool:
    """True when ``[``/``{`` nest deeper than MAX_DEPTH outside strings, without recursion:
    strip the strings, then remove innermost pairs MAX_DEPTH times (each pass is one regex
    substitution); a pair left is deeper; unpaired brackets left are counted by a short
    iterative scan (30,000 unclosed ``[`` must not reach json.loads either)."""
    text = _STRINGS.sub("0", text)
    for _ in range(MAX_DEPTH):
        text, removed = _INNERMOST.subn("0", text)
        if not removed:
            break
    if _INNERMOST.search(text):
        return True
    depth = 0
    for match in _BRACKETS.finditer(text):
        depth += 1 if match.group() in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidItems(f"a number has {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidItems(f"a number is out of range: {text[:30]}")
    return value


def _constant(name: str) -> Any:
    raise InvalidItems(f"{name} is not a number JSON allows")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        dupe = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvalidItems(f"key {dupe[:40]!r} appears twice in one object")
    return result


def decode_json(raw: str | bytes, *, what: str, max_bytes: int) -> Any:
    """Parse JSON text or UTF-8 bytes under the limits above; InvalidItems naming ``what``."""
    if isinstance(raw, (bytes, bytearray)):
        if len(raw) > max_bytes:
            raise InvalidItems(f"{what} is {len(raw)} bytes (at most {max_bytes})")
        try:
            raw = bytes(raw).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidItems(f"{what} is not UTF-8 text (byte {exc.start})") from None
    elif len(raw) > max_bytes // 4 and len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidItems(f"{what} is {len(raw.encode('utf-8', 'surrogatepass'))} bytes (at most {max_bytes})")
    if _too_deep(raw):
        raise InvalidItems(f"{what} is nested more than {MAX_DEPTH} levels deep")
    try:
        value = json.loads(
            raw, parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object
        )
    except InvalidItems as exc:
        raise InvalidItems(f"{what}: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, or a number Python will not convert
        where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        raise InvalidItems(f"{what} is not valid JSON ({reason}{where})") from None
    if _BAD_ESCAPE.search(raw) or _BAD_CHAR.search(raw):
        check_value(value, what)  # walk only when a NUL or surrogate may be in there
    return value


def check_value(value: Any, what: str) -> None:
    """Refuse what no JSON column or API can carry, walking iteratively: nesting deeper than
    ``MAX_DEPTH``, NUL or lone surrogates in strings (keys too), non-finite floats, huge ints."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise InvalidItems(f"{what} is nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise InvalidItems(f"{what} has a key that is not text: {key!r:.40}")
                    stack.append((key, depth + 1))
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, str):
            bad = _BAD_CHAR.search(item)
            if bad is not None:
                kind = "a NUL character" if bad.group() == "\x00" else f"a lone surrogate U+{ord(bad.group()):04X}"
                raise InvalidItems(f"{what} holds {kind} in a string")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) >= 10**MAX_INT_DIGITS:
                raise InvalidItems(f"{what} holds a number with more than {MAX_INT_DIGITS} digits")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidItems(f"{what} holds a number JSON cannot carry ({item})")
        else:
            raise InvalidItems(f"{what} holds a {type(item).__name__}, not a JSON value")


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string", int: "integer", float: "number"}.get(type(value), type(value).__name__)
