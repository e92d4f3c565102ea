"""The one reader of untrusted batch input (no database): task_data text, item files, staged rows."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from batchlib.batch_types import batch_type_names, get_batch_type
from batchlib.errors import InvalidItems
from batchlib.settings import Settings
from batchlib.task_data import (
    MAX_DEPTH,
    check_task_data,
    decode_json,
    decode_task_data,
    items_from_file,
    read_items_file,
    staged_request,
    task_data_problem,
    unstaged_request,
)

pytestmark = pytest.mark.unit

DEEP = "[" * 30_000 + "]" * 30_000
NICK = get_batch_type("nickname_change")
CHECK = get_batch_type("account_check")


def one_line(message: str) -> None:
    assert message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (DEEP, "nested more than 16 levels"),
        ('{"items": ' + DEEP + "}", "nested more than 16 levels"),
        ("[" * 30_000, "nested more than 16 levels"),  # unclosed: must not reach json.loads either
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than 16 levels"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        ('{"a": NaN}', "NaN is not a number"),
        ('{"a": Infinity}', "Infinity is not a number"),
        ('{"a": 1e999}', "out of range"),
        ('{"a": ' + "9" * 30 + "}", "30 digits"),
        ('{"a": ' + "9" * 5000 + "}", "5000 digits"),
        ('{"a": "x\\u0000y"}', "NUL character"),
        ('{"a": "\\ud800"}', "lone surrogate U+D800"),
        ('{"\\udc00": 1}', "lone surrogate U+DC00"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ("{", "not valid JSON"),
        ("x" * 70_000, "70000 bytes (at most 65535)"),
    ],
)
def test_hostile_text_is_refused_in_one_line(raw, reason: str) -> None:
    limit = sys.getrecursionlimit()
    with pytest.raises(InvalidItems, match=re.escape(reason)) as caught:
        decode_json(raw, what="task_data", max_bytes=65_535)
    one_line(str(caught.value))
    assert sys.getrecursionlimit() == limit


@pytest.mark.parametrize(
    "raw", ['{"items": [{"account_id": 1, "nickname": "[[[[[[[[[[[[[[[[[[[[[[[[[["}]}', '"\\ud83d\\ude00"', "[" * 16 + "]" * 16]
)
def test_valid_text_passes(raw: str) -> None:
    assert decode_json(raw, what="x", max_bytes=10**6) == json.loads(raw)


@pytest.mark.parametrize(
    ("task_type", "raw", "reason"),
    [
        ("account_check", '{"acount_ids": [1]}', "unknown key(s) 'acount_ids' in task_data: account_check takes account_ids"),
        ("account_check", '{"account_ids": "1,2"}', "task_data account_ids must be a list, got string"),
        ("account_check", "[1, 2]", "task_data must be a JSON object, got list"),
        ("account_check", '"text"', "task_data must be a JSON object, got string"),
        ("account_check", '{"items_count": true}', "items_count must be a integer, got boolean"),
        ("nickname_change", '{"items": [], "extra": 1}', "unknown key(s) 'extra'"),
        ("pin_sync", '{"items_count": 3}', "pin_sync takes no keys"),
        ("account_check", DEEP, "nested more than 16 levels"),
    ],
)
def test_row_problems_name_the_reason(task_type: str, raw: str, reason: str) -> None:
    problem = task_data_problem(task_type, raw)
    assert problem is not None and problem.startswith("invalid task_data: ") and reason in problem, problem
    one_line(problem)


@pytest.mark.parametrize("raw", [None, "", "  ", "null", '{"account_ids": [1, 2]}', '{"items_count": 2, "source": "x"}'])
def test_readable_rows_have_no_problem(raw) -> None:
    assert task_data_problem("account_check", raw) is None


@pytest.mark.parametrize("task_type", ["account_check", "nickname_change", "avatar_change", "add_friend"])
def test_retry_rows_pass_for_types_whose_items_are_detail_rows(task_type: str) -> None:
    assert task_data_problem(task_type, '{"retry_failed_of": 42}') is None  # the panel's retry row
    assert task_data_problem(task_type, '{"retry_failed_of": 42, "items_count": 3}') is None  # as a retry stores it
    assert "must be a integer" in task_data_problem(task_type, '{"retry_failed_of": "42"}')


def test_pin_sync_takes_no_retry() -> None:
    assert "unknown key(s) 'retry_failed_of'" in task_data_problem("pin_sync", '{"retry_failed_of": 42}')


def test_every_type_declares_its_inputs() -> None:
    for name in batch_type_names():
        batch_type = get_batch_type(name)
        assert batch_type.staged_as is None or batch_type.staged_as in batch_type.inputs, name
        assert decode_task_data(json.dumps({k: None for k in batch_type.inputs}) if batch_type.inputs else None,
                                batch_type) in (None, {k: None for k in batch_type.inputs})


def test_flow_parameters_are_checked_like_rows() -> None:
    with pytest.raises(InvalidItems, match="NUL character"):
        check_task_data({"items": [{"account_id": 1, "nickname": "a\x00b"}]}, NICK)
    with pytest.raises(InvalidItems, match="lone surrogate"):
        check_task_data({"items": [{"account_id": 1, "nickname": "a\ud800"}]}, NICK)
    with pytest.raises(InvalidItems, match="more than 19 digits"):
        check_task_data({"items": [{"account_id": 10**40, "nickname": "a"}]}, NICK)
    nested: list = []
    for _ in range(30_000):
        nested = [nested]
    with pytest.raises(InvalidItems, match="nested more than"):
        check_task_data({"items": nested}, NICK)


def test_a_summary_without_staged_rows_is_refused() -> None:
    """{"items_count": 5} with no detail rows must not read as "every account"."""
    with pytest.raises(InvalidItems, match="no detail rows are staged"):
        unstaged_request({"items_count": 5, "source": "x"})
    assert unstaged_request({"account_ids": [1]}) == {"account_ids": [1]}


def test_staged_rows_become_the_request() -> None:
    rows = [(1, '{"account_id": 1, "nickname": "a"}'), (2, '{"nickname": "b"}')]
    assert staged_request(NICK, {"items_count": 2}, rows) == {
        "items": [{"account_id": 1, "nickname": "a"}, {"nickname": "b", "account_id": 2}]
    }
    assert staged_request(CHECK, None, [(5, None), (6, "null")]) == {"account_ids": [5, 6]}


@pytest.mark.parametrize(
    ("batch_type", "task_data", "rows", "reason"),
    [
        (NICK, {"items_count": 3}, [(1, '{"nickname": "a"}')], "items_count 3 but 1 detail rows"),
        (NICK, {"items": [{"account_id": 1}]}, [(1, '{"nickname": "a"}')], "give the items one way only"),
        (NICK, None, [(1, '{"account_id": 2, "nickname": "a"}')], "item_id must be the account id"),
        (NICK, None, [(1, "[1]")], "item_data of item 1 must be a JSON object, got list"),
        (NICK, None, [(1, DEEP)], "item_data of item 1 is nested more than"),
        (CHECK, None, [(1, '{"x": 1}')], "must be NULL for account_check"),
        (get_batch_type("pin_sync"), None, [(1, None)], "pin_sync takes no staged items"),
    ],
)
def test_bad_staged_rows_are_refused(batch_type, task_data, rows, reason: str) -> None:
    with pytest.raises(InvalidItems, match=re.escape(reason)) as caught:
        staged_request(batch_type, task_data, rows)
    one_line(str(caught.value))


def test_items_files_json_and_csv(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"account_id": 1, "nickname": "x"}]')
    (tmp_path / "b.csv").write_text("nickname,account_id\r\nAlice,1\r\n\"Bob, Jr\",2\r\n", encoding="utf-8")
    (tmp_path / "ids.txt").write_text("1\n2\n\n3\n")
    (tmp_path / "ids.json").write_text('{"account_ids": [1, 2]}')
    assert read_items_file(tmp_path / "a.json", columns=NICK.item_keys) == [{"account_id": 1, "nickname": "x"}]
    assert read_items_file(tmp_path / "b.csv", columns=NICK.item_keys) == [
        {"nickname": "Alice", "account_id": "1"}, {"nickname": "Bob, Jr", "account_id": "2"}]
    assert read_items_file(tmp_path / "ids.txt", columns=CHECK.item_keys) == ["1", "2", "3"]
    assert read_items_file(tmp_path / "ids.json", columns=CHECK.item_keys) == [1, 2]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (DEEP.encode(), "nested more than 16 levels"),
        (b'{"items": "x"}', "expected a JSON list of items, got string"),
        (b'{"rows": []}', 'only "items" or "account_ids"'),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"account_id,nick\n1,a\n", "the first line must be the CSV header account_id,nickname"),
        (b"account_id,nickname\n1\n", "line 2: expected 2 values, got 1"),
        (b"account_id,nickname\n1,a\x00b\n", "NUL character"),
        (b"", "holds no items"),
    ],
)
def test_bad_items_files_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "items.dat"
    path.write_bytes(content)
    with pytest.raises(InvalidItems, match=re.escape(reason)) as caught:
        read_items_file(path, columns=NICK.item_keys)
    one_line(str(caught.value))


def test_workers_read_items_files_only_under_items_dir(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (inside / "ok.json").write_text("[]")
    (outside / "secret.json").write_text("[]")
    settings = Settings(items_dir=str(inside))
    assert items_from_file(settings, NICK, str(inside / "ok.json")) == []
    with pytest.raises(InvalidItems, match="must be inside"):
        items_from_file(settings, NICK, str(inside / ".." / "out" / "secret.json"))
    with pytest.raises(InvalidItems, match="cannot read the items file missing.json"):
        items_from_file(Settings(), NICK, str(tmp_path / "missing.json"))
