"""Hostile input: flow parameters and admin-inserted rows, fuzzed with hypothesis.

Every invalid request must be refused with a one-line reason a user can act on, write nothing
(no la_batch_task / la_batch_run / detail row; an admin row is only marked failed with the
reason) and call the platform 0 times. The fuzzing calls the validation layer the flows use
(``BatchType.parse`` in a transaction, ``open_batch``/``describe_batch`` without Prefect);
a handful of real flow runs check the same end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchcore.errors import BatchError, InvalidInput, InvalidItems, UnknownBatchType
from batchcore.settings import get_settings
from batchlib.batch_types import batch_type_names, get_batch_type
from batchlib.seeding import import_accounts
from db import run_transaction
from flows.account_check import account_check
from tasks.batch_steps import describe_batch, open_batch
from tests.support.faults import REPO, FaultEnv, run, subprocess_env

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANT, OTHER = 7, 8
N = 20  # accounts per tenant
OWN = [TENANT * 100000 + i for i in range(1, N + 1)]
FOREIGN = [OTHER * 100000 + i for i in range(1, N + 1)]
MAX = 100_000
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

bad_tenant = st.one_of(
    st.integers(max_value=0), st.integers(min_value=2**31), st.just(99), st.just(2**31 - 1),
    st.text(max_size=12).filter(lambda s: not s.strip().isdigit()), st.floats(allow_nan=True), st.none(),
    st.booleans(), st.lists(st.integers(), max_size=2),
)
good_ids = st.lists(st.sampled_from(OWN), min_size=1, max_size=5, unique=True)
bad_ids = st.one_of(
    st.just([]),
    good_ids.map(lambda ids: ids + ids[:1]),                                   # a duplicate
    st.tuples(good_ids, st.sampled_from(FOREIGN)).map(lambda t: t[0] + [t[1]]),  # a foreign account
    st.tuples(good_ids, st.integers(max_value=0)).map(lambda t: t[0] + [t[1]]),  # zero / negative
    st.tuples(good_ids, st.integers(min_value=2**31)).map(lambda t: t[0] + [t[1]]),
    st.tuples(good_ids, st.sampled_from([None, "x", "1e3", 1.5, [], {}, True])).map(lambda t: t[0] + [t[1]]),
    st.sampled_from([7, "700001", {"a": 1}, None, 1.5]).map(lambda v: v),  # not a list (None: see below)
)
bad_request = st.one_of(
    st.tuples(bad_tenant, st.one_of(st.none(), good_ids)),
    st.tuples(st.just(TENANT), bad_ids.filter(lambda v: v is not None)),
)


def assert_nothing_written(env: FaultEnv) -> None:
    counts = env.sql("SELECT (SELECT COUNT(*) FROM la_batch_task), (SELECT COUNT(*) FROM la_batch_run),"
                     " (SELECT COUNT(*) FROM la_batch_task_detail)")[0]
    assert tuple(counts) == (0, 0, 0)
    assert env.sim.stats()["total"] == 0


def assert_clear(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message and len(message) < 400, message


@pytest.fixture
def fuzz_env(fault_env: FaultEnv) -> FaultEnv:
    fault_env.seed_canaries({TENANT: N, OTHER: N})
    return fault_env


def test_fuzzed_flow_parameters_are_refused(fuzz_env: FaultEnv) -> None:
    """60 fuzzed (tenant, account_ids) requests, each invalid, plus 100,001 ids: parse raises an
    InvalidInput with a one-line reason, open_batch refuses it, 0 rows written, 0 platform calls."""
    account_check_type = get_batch_type("account_check")
    settings_ = get_settings()

    @FUZZ
    @given(bad_request)
    @example((TENANT, OWN[:1] * 0 + list(range(1, MAX + 2))))  # 100,001 ids
    @example((TENANT, [OWN[0], OWN[0]]))
    @example(("7; DROP TABLE la_batch_task", None))
    def check(request) -> None:
        tenant_id, ids = request
        task_data = {} if ids is None else {"account_ids": ids}
        with pytest.raises(InvalidInput) as caught:
            run_transaction(fuzz_env.engine, lambda s: account_check_type.parse(s, tenant_id, task_data, settings_))
        assert_clear(str(caught.value))
        with pytest.raises(BatchError) as refused:
            open_batch("account_check", tenant_id, task_data, task_name="fuzz", create_admin_id=1,
                       batch_id=None, flow_run_id=None)
        # The same refusal, or the shape check every request passes first (e.g. "must be a list").
        refusal = str(refused.value)
        assert type(refused.value) is InvalidItems or refusal == str(caught.value)
        assert_clear(refusal)
        if isinstance(ids, list) and len(ids) > MAX:
            assert refusal == f"too many items: {len(ids)} (at most {MAX} per batch)"
        assert_nothing_written(fuzz_env)

    check()


@pytest.mark.parametrize("name", ["", "Account_Check", "account_check ", "pin-sync", "x" * 200, "__import__"])
def test_unknown_batch_types_are_refused(fuzz_env: FaultEnv, name: str) -> None:
    """An unknown type: UnknownBatchType naming the known types, open_batch refuses, 0 rows, 0 calls."""
    with pytest.raises(UnknownBatchType) as caught:
        get_batch_type(name)
    assert all(t in str(caught.value) for t in batch_type_names())
    with pytest.raises(UnknownBatchType):
        open_batch(name, TENANT, {}, task_name="fuzz", create_admin_id=1, batch_id=None, flow_run_id=None)
    assert_nothing_written(fuzz_env)


admin_task_data = st.one_of(
    bad_ids.filter(lambda v: v is not None).map(lambda ids: json.dumps({"account_ids": ids})),
    # (100,001 ids cannot be inserted by the panel at all: task_data is TEXT, 64 KiB)
    st.just(json.dumps({"account_ids": list(range(1, 9001))})),
    st.text(max_size=30).filter(lambda t: not _is_json_object(t)),               # not JSON / not an object
    st.sampled_from(["[1, 2]", "null", "42", '"text"', "{", '{"account_ids": "1,2"}']),
)
admin_tenant = st.one_of(st.integers(min_value=-(2**31), max_value=0), st.just(99), st.just(2**31 - 1),
                         st.just(TENANT))


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def test_fuzzed_admin_rows_are_refused(fuzz_env: FaultEnv) -> None:
    """60 fuzzed pending rows as the admin panel inserts them (bad tenant, bad or non-JSON task_data):
    the run's first steps (describe_batch, open_batch) refuse each one; the row is either left
    pending (unreadable task_data: the dispatcher fails it) or marked failed with a one-line
    'invalid task_data: ...' reason; 0 detail rows, 0 platform calls. Runs with valid task_data
    but a bad tenant are refused too."""

    @FUZZ
    @given(admin_tenant, admin_task_data)
    def check(tenant_id: int, data: str) -> None:
        if tenant_id == TENANT and _is_json_object(data) and json.loads(data) == {}:
            return  # a valid request
        batch_id = fuzz_env.insert_pending(tenant_id, "account_check", data)
        try:
            with pytest.raises(BatchError) as refused:
                row = describe_batch(batch_id, "account_check")
                open_batch("account_check", row.tenant_id, row.task_data, task_name="panel", create_admin_id=1,
                           batch_id=batch_id, flow_run_id=None)
            assert_clear(str(refused.value))
            status, error = fuzz_env.sql("SELECT task_status, error_message FROM la_batch_task WHERE id = :b",
                                         b=batch_id)[0]
            if status == "failed":
                assert error.startswith("invalid task_data: "), error
                assert_clear(error)
            else:
                assert status == "pending" and not _is_json_object(data), (status, data)
            assert fuzz_env.sql("SELECT COUNT(*) FROM la_batch_task_detail")[0][0] == 0
            assert fuzz_env.sim.stats()["total"] == 0
        finally:
            fuzz_env.sql("DELETE FROM la_batch_run WHERE task_id = :b", b=batch_id)
            fuzz_env.sql("DELETE FROM la_batch_task WHERE id = :b", b=batch_id)

    check()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tenant_id": -1}, "rejected: tenant id must be between 1"),
        ({"tenant_id": 2**31}, "rejected: tenant id must be between 1"),
        ({"tenant_id": TENANT, "account_ids": list(range(1, 9001))}, "rejected: 9000 account id(s) are not active accounts of tenant 7"),
        ({"tenant_id": TENANT, "account_ids": OWN[:3] + FOREIGN[:1]}, "rejected: 1 account id(s) are not active"),
        ({"tenant_id": "abc"}, "Validation of flow parameters failed"),
        ({"tenant_id": TENANT, "task_name": "x" * 256}, "rejected: task name is 256 characters long (at most 255)"),
        ({"tenant_id": TENANT, "create_admin_id": 2**31}, "rejected: admin id must be between 0 and 2147483647"),
        ({"tenant_id": TENANT, "create_admin_id": -1}, "rejected: admin id must be between 0 and 2147483647"),
        ({"tenant_id": TENANT, "account_ids": [10**25]}, "rejected: task_data holds a number with more than 19 digits"),
        ({"tenant_id": TENANT, "account_ids_file": "/etc/hostname"}, "rejected: the items file hostname: the first line"),
    ],
    ids=["negative-tenant", "huge-tenant", "9000-unknown-ids", "foreign-account", "non-numeric-tenant",
         "long-task-name", "admin-id-too-big", "negative-admin-id", "huge-account-id", "not-an-ids-file"],
)
def test_real_flow_runs_refuse_bad_parameters(fuzz_env: FaultEnv, params: dict, message: str, leak_check) -> None:
    """A real flow run per case: Failed with the reason, 0 rows written, 0 platform calls."""
    state = run(account_check(**params, return_state=True))

    assert state.is_failed() and message in (state.message or ""), state.message
    assert_nothing_written(fuzz_env)
    leak_check(fuzz_env)


def test_valid_ids_beyond_the_task_data_column_are_accepted(fuzz_env: FaultEnv) -> None:
    """10,000 valid ids of one tenant (~70 KB as task_data, more than the panel's TEXT column
    holds): accepted; the ids are the detail rows and task_data keeps their summary."""
    ids = import_accounts(fuzz_env.engine, [
        {"uid": f"u9-{n:06d}", "tenant_id": 9, "access_token": "x", "refresh_token": "y"} for n in range(1, 10_001)
    ])
    opened = open_batch("account_check", 9, {"account_ids": ids}, task_name="big", create_admin_id=1,
                        batch_id=None, flow_run_id=None)
    assert (opened.total, opened.pending) == (10_000, 10_000)
    (task_data,) = fuzz_env.sql("SELECT task_data FROM la_batch_task WHERE id = :b", b=opened.batch_id)[0]
    assert json.loads(task_data) == {"items_count": 10_000, "source": "flow parameters"}
    assert fuzz_env.sim.stats()["total"] == 0


def test_100001_ids_as_flow_parameters_are_refused_by_prefect(fuzz_env: FaultEnv) -> None:
    """100,001 ids as a real flow run's parameter: Prefect's API refuses to create the run
    (parameters over 512 KiB, HTTP 422) before any of our code runs: 0 rows, 0 platform calls."""
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError, match="Flow run parameters must be less than 524,288 bytes"):
        run(account_check(tenant_id=TENANT, account_ids=list(range(1, MAX + 2)), return_state=True))
    assert_nothing_written(fuzz_env)


# -- every entry point: one line, exit 2, nothing written ------------------------------------

DEEP = "[" * 30_000 + "]" * 30_000
GOOD = json.dumps([{"account_id": OWN[0], "nickname": "ok"}])


def _cli_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    deep_file, bad_utf8, ids_file = tmp / "deep.json", tmp / "latin1.csv", tmp / "ids.txt"
    deep_file.write_text(DEEP)
    bad_utf8.write_bytes("account_id,nickname\n700001,caf\xe9\n".encode("latin-1"))
    ids_file.write_text("account_id\nabc\n")
    nick = "flows.nickname_change"
    items = ["--tenant-id", str(TENANT), "--items"]
    return [
        (nick, ["--tenant-id", "7", "--task-name", "x" * 256, "--items", GOOD], "task name is 256 characters"),
        (nick, ["--tenant-id", "7", "--admin-id", str(2**31), "--items", GOOD], "admin id must be between 0"),
        (nick, ["--tenant-id", "7", "--admin-id", "-1", "--items", GOOD], "admin id must be between 0"),
        (nick, ["--tenant-id", "7", "--admin-id", "abc", "--items", GOOD], "invalid int value"),
        (nick, [*items, '[{"account_id": 700001, "nickname": "a\\u0000b"}]'], "NUL character"),
        (nick, [*items, '[{"account_id": 700001, "nickname": "\\ud800"}]'], "lone surrogate U+D800"),
        (nick, ["--tenant-id", "7", "--items-file", str(deep_file)], "nested more than 16 levels"),
        (nick, ["--tenant-id", "7", "--items-file", str(bad_utf8)], "is not UTF-8 text"),
        (nick, ["--tenant-id", "7", "--items-file", str(tmp / "missing.json")], "no such file"),
        (nick, [*items, DEEP], "nested more than 16 levels"),
        (nick, [*items, '["1"]'], "item 0 must be an object, got str"),
        (nick, [*items, "[1]"], "item 0 must be an object, got int"),
        (nick, [*items, '[{"account_id": ' + "9" * 40 + ', "nickname": "a"}]'], "40 digits"),
        (nick, [*items, '[{"account_id": NaN, "nickname": "a"}]'], "NaN is not a number"),
        (nick, [*items, '[{"account_id": 700001, "nickname": Infinity}]'], "Infinity is not a number"),
        (nick, [*items, '[{"account_id": 1e400, "nickname": "a"}]'], "out of range"),
        (nick, [*items, '[{"account_id": 700001, "nickanme": "a"}]'], "unknown key(s) 'nickanme'"),
        ("flows.account_check", ["--tenant-id", "7", "--account-ids-file", str(ids_file)], "account id must be a positive"),
        ("flows.account_check", ["--tenant-id", "7", "--account-ids", "1,x"], "expected comma-separated integer ids"),
    ]


def test_cli_refusals_are_one_line_and_write_nothing(fuzz_env: FaultEnv, tmp_path: Path) -> None:
    """Each hostile command line, run as a user would: exit 2, one line on stderr naming the
    problem, no traceback; afterwards 0 rows, 0 platform calls."""
    env = subprocess_env()
    cases = _cli_cases(tmp_path)

    def run_case(case):
        module, argv, _ = case
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)

    with ThreadPoolExecutor(max_workers=3) as pool:  # each command is its own process: ~2 s of imports each
        runs = list(pool.map(run_case, cases))
    for (module, argv, reason), done in zip(cases, runs, strict=True):
        shown = f"{module} {' '.join(a[:40] for a in argv)}: {done.stderr[-1500:]}"
        assert done.returncode == 2, shown
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, shown
        assert reason in done.stderr and "Traceback" not in done.stderr, shown
    assert_nothing_written(fuzz_env)


def _hostile_items() -> st.SearchStrategy[str]:
    """--items texts that are each wrong in at least one way (so no case may run a batch)."""
    good_item = st.fixed_dictionaries({"account_id": st.sampled_from(OWN), "nickname": st.just("ok")})
    bad_value = st.sampled_from([
        "NaN", "-Infinity", "1e999", "9" * 25, '"\\u0000"', '"\\udfff"', '"a\\ud800b"', "[]", "{}", "null", "true",
        '"' + "x" * 33 + '"', '"\\u200b"',
    ])
    bad_item = st.one_of(
        st.tuples(st.sampled_from(["account_id", "nickname", "nick", "", "\\u0000"]), bad_value).map(
            lambda kv: '{"account_id": 700001, "%s": %s}' % kv if kv[0] != "account_id" else '{"account_id": %s}' % kv[1]),
        st.integers(min_value=17, max_value=40_000).map(lambda d: "[" * d + "]" * d),
        st.sampled_from(['"1"', "1", "null", "[1]", "true", '{"account_id": "abc", "nickname": "a"}']),
    )
    return st.tuples(st.lists(good_item, max_size=3), bad_item, st.integers(min_value=0, max_value=3)).map(
        lambda t: "[" + ", ".join([json.dumps(i) for i in t[0][: t[2]]] + [t[1]] + [json.dumps(i) for i in t[0][t[2]:]]) + "]"
    )


def test_fuzzed_cli_items_are_refused_in_one_line(fuzz_env: FaultEnv, capsys) -> None:
    """60 hostile --items texts through the nickname CLI's main(), in this process: any exception
    fails the test with its traceback; each must exit 2 with one line, 0 rows, 0 calls."""
    from flows.nickname_change import main

    @FUZZ
    @given(_hostile_items())
    @example("[" * 30_000 + "]" * 30_000)
    @example('["1"]')
    def check(text: str) -> None:
        try:
            code = main(["--tenant-id", str(TENANT), "--items", text])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (text[:200], err)
        assert_nothing_written(fuzz_env)

    check()


@pytest.mark.parametrize(
    ("task_data", "reason"),
    [
        (DEEP, "nested more than 16 levels"),
        ('{"acount_ids": [700001]}', "unknown key(s) 'acount_ids'"),
        ('{"account_ids": [700001], "note": "\\u0000"}', "NUL character"),
        ('{"account_ids": [1e999]}', "out of range"),
        ('{"items_count": 5}', "no detail rows are staged"),
    ],
)
def test_admin_rows_started_by_batch_id_fail_alone(fuzz_env: FaultEnv, task_data: str, reason: str) -> None:
    """A hostile panel row started directly (the UI's batch_id, no dispatcher): the run fails the
    row with a one-line reason and writes nothing else; a good row of another tenant then runs."""
    bad = fuzz_env.insert_pending(TENANT, "account_check", task_data)
    state = run(account_check(tenant_id=TENANT, batch_id=bad, return_state=True))
    assert state.is_failed() and reason in state.message, state.message
    row = fuzz_env.batch(bad)
    assert row["task_status"] == "failed" and reason in row["error_message"], row["error_message"]
    assert_clear(row["error_message"])
    assert fuzz_env.sim.stats()["total"] == 0
    good = fuzz_env.insert_pending(OTHER, "account_check", {"account_ids": FOREIGN[:2]})
    assert run(account_check(tenant_id=OTHER, batch_id=good, return_state=True)).is_completed()
