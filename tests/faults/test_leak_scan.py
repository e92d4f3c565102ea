"""The leak scan itself can fail: a run that logs a secret is caught in every place it lands."""

from __future__ import annotations

import uuid
from dataclasses import replace
from types import SimpleNamespace

from prefect import flow, get_run_logger

from tests.support.faults import AllLogs, FaultEnv, drain_prefect_logs, scan_for_tokens
from tests.support.services import auth_needles


def test_the_scan_finds_a_logged_canary_and_prefect_credential(fault_env: FaultEnv, prefect_server,
                                                               all_logs: AllLogs) -> None:
    assert prefect_server.auth_string, "the session's Prefect API must run with authentication on"
    # A stand-in credential and canary: what this test leaks on purpose stays in the session's
    # Prefect database, and must not trip the other tests' scans for the real ones.
    server = SimpleNamespace(auth_string=f"batch:{uuid.uuid4().hex}", db=prefect_server.db, home=prefect_server.home)
    env = replace(fault_env, canary=f"CANARY-{uuid.uuid4().hex[:16]}")
    header = auth_needles(server.auth_string)[2]

    @flow
    def careless() -> None:
        get_run_logger().info("calling with Authorization: Basic %s", header)
        get_run_logger().info("token %s", env.canary)

    careless()
    drain_prefect_logs()
    leaks = scan_for_tokens(env, server, all_logs)
    assert leaks.found["logs"] >= 2 and leaks.found["prefect database"] >= 2, leaks.found
    assert leaks.found["mirror tables"] == leaks.found["redis"] == 0
