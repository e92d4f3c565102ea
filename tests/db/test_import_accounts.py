"""``python -m db import-accounts FILE``: CSV or JSON, every row checked before any write, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from batchcore.settings import get_settings
from db.__main__ import main
from db.engine import make_engine
from db.migrate import upgrade

CSV = (
    "tenant_id,platform_uid,access_token,refresh_token,nickname,status\n"
    "7,u7-000001,at-1,rt-1,Alice,alive\n"
    "7,u7-000002,at-2,rt-2,,\n"
    "8,u8-000001,at-3,rt-3,Bob,\n"
)


def _rows(url: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(
                "SELECT tenant_id, platform_uid, access_token, refresh_token, nickname, status"
                " FROM la_alt_account ORDER BY tenant_id, platform_uid"
            ))]
    finally:
        engine.dispose()


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["import-accounts", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_then_json_import_is_idempotent(any_db_url: str, tmp_path: Path, capsys) -> None:
    upgrade(any_db_url)
    first = tmp_path / "accounts.csv"
    first.write_text(CSV, encoding="utf-8")
    code, out, err = _run(capsys, str(first), "--url", any_db_url)
    assert (code, err) == (0, "") and out.startswith("imported 3 accounts of 2 tenant(s)")
    assert _rows(any_db_url) == [
        (7, "u7-000001", "at-1", "rt-1", "Alice", "alive"),
        (7, "u7-000002", "at-2", "rt-2", None, "unknown"),
        (8, "u8-000001", "at-3", "rt-3", "Bob", "unknown"),
    ]
    again = tmp_path / "accounts.json"
    again.write_text(json.dumps([
        {"tenant_id": 7, "platform_uid": "u7-000002", "access_token": "at-2b", "refresh_token": "rt-2b"},
        {"tenant_id": 9, "platform_uid": "u9-000001", "access_token": "at-4", "refresh_token": "rt-4", "id": 900001},
    ]), encoding="utf-8")
    assert _run(capsys, str(again), "--url", any_db_url)[0] == 0
    assert _run(capsys, str(first), "--url", any_db_url)[0] == 0  # the first file again: same rows
    rows = _rows(any_db_url)
    assert len(rows) == 4 and (7, "u7-000002", "at-2", "rt-2", None, "unknown") in rows
    engine = make_engine(any_db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM la_alt_account WHERE platform_uid = 'u9-000001'")).scalar() == 900001
    engine.dispose()


BAD = [
    ("a.csv", "tenant_id,platform_uid,access_token\n7,u1,at\n", "row 1: refresh_token is missing"),
    ("a.csv", CSV.replace("nickname,status", "nickname,password"), "row 1: unknown column 'password'"),
    ("a.csv", CSV + "7,u7-000001,at-9,rt-9,,\n", "row 4: tenant 7 account 'u7-000001' is also in row 1"),
    ("a.csv", CSV.replace("8,u8", "x,u8"), "row 3: tenant_id must be an integer"),
    ("a.csv", CSV.replace("8,u8", "99999999999,u8"), "row 3: tenant_id must be an integer from 1 to 2147483647"),
    ("a.csv", CSV.replace(",alive", ",zombie"), "row 1: status must be one of"),
    ("a.csv", CSV.replace("Alice", "Al\x00ice"), "row 1: nickname contains a NUL byte"),
    ("a.csv", CSV + "7,u7-3,at\n", "row 4: 6 columns expected"),
    ("a.csv", "", "the CSV file has no header row"),
    ("a.csv", "tenant_id,platform_uid,access_token,refresh_token\n", "no accounts in the file"),
    ("a.json", "[" * 30000 + "]" * 30000, "nested too deeply"),
    ("a.json", '{"tenant_id": 7}', "must hold a list of account objects"),
    ("a.json", '[{"tenant_id": 7, "platform_uid": "u", "access_token": "a", "refresh_token": "\\ud800"}]',
     "row 1: refresh_token is not valid Unicode"),
    ("a.json", '[{"tenant_id": 7, "platform_uid": "u", "access_token": "a", "refresh_token": ["r"]}]',
     "row 1: refresh_token must be a non-empty string"),
    ("a.json", "[1", "not valid JSON"),
    ("a.txt", CSV, "expected a .csv or .json file"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_files_are_one_line_exit_2_nothing_written(
    sqlite_url: str, tmp_path: Path, capsys, name: str, content: str, message: str
) -> None:
    upgrade(sqlite_url)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8", errors="surrogatepass")
    code, out, err = _run(capsys, str(path), "--url", sqlite_url)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert _rows(sqlite_url) == []


def test_not_utf8_and_missing_file(sqlite_url: str, tmp_path: Path, capsys) -> None:
    upgrade(sqlite_url)
    path = tmp_path / "a.csv"
    path.write_bytes(CSV.replace("Alice", "Al\xe9ice").encode("latin-1"))
    code, _, err = _run(capsys, str(path), "--url", sqlite_url)
    assert code == 2 and "not UTF-8 text" in err and err.count("\n") == 1
    code, _, err = _run(capsys, str(tmp_path / "nope.csv"), "--url", sqlite_url)
    assert code == 2 and "cannot be read" in err
    assert _rows(sqlite_url) == []


def test_an_id_of_another_account_writes_nothing(sqlite_url: str, tmp_path: Path, capsys) -> None:
    upgrade(sqlite_url)
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"tenant_id": 7, "platform_uid": "u1", "access_token": "a", "refresh_token": "r", "id": 5}]))
    assert _run(capsys, str(path), "--url", sqlite_url)[0] == 0
    path.write_text(json.dumps([
        {"tenant_id": 7, "platform_uid": "u2", "access_token": "a", "refresh_token": "r"},
        {"tenant_id": 7, "platform_uid": "u3", "access_token": "a", "refresh_token": "r", "id": 5},
    ]))
    code, _, err = _run(capsys, str(path), "--url", sqlite_url)
    assert code == 2 and "id 5 already belongs to another account" in err
    assert [r[1] for r in _rows(sqlite_url)] == ["u1"]


def test_an_adopted_table_needs_the_flag(sqlite_url: str, tmp_path: Path, capsys, monkeypatch) -> None:
    upgrade(sqlite_url)
    monkeypatch.setenv("BATCH_ACCOUNT_COL_LAST_CHECK_TIME", "")  # any BATCH_ACCOUNT_* change: adopted
    get_settings.cache_clear()
    try:
        path = tmp_path / "a.csv"
        path.write_text(CSV, encoding="utf-8")
        code, _, err = _run(capsys, str(path), "--url", sqlite_url)
        assert code == 2 and "is adopted" in err and "--into-adopted" in err
        assert _rows(sqlite_url) == []
        assert _run(capsys, str(path), "--url", sqlite_url, "--into-adopted")[0] == 0
        assert len(_rows(sqlite_url)) == 3
    finally:
        get_settings.cache_clear()


def test_the_simulator_knows_the_accounts_of_an_import_file(tmp_path: Path) -> None:
    """``--accounts-file``: the README path (import, then start the simulator) has working tokens."""
    import subprocess
    import sys

    import httpx

    from simulators._http import READY_PREFIX

    path = tmp_path / "accounts.csv"
    path.write_text(CSV, encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.account_platform", "--port", "0", "--accounts-file", str(path)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(READY_PREFIX), line
        url = line[len(READY_PREFIX):].strip()
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": "Bearer at-1"}, timeout=10)
        assert me.status_code == 200 and me.json()["uid"] == "u7-000001" and me.json()["nickname"] == "Alice"
        refreshed = httpx.post(f"{url}/v1/oauth/refresh", json={"refresh_token": "rt-3"}, timeout=10)
        assert refreshed.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
