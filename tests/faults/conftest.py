"""Fault-injection fixtures: canary tokens, leak scans, progress triggers, private servers.

Every account is seeded with tokens that contain this test's canary (``CANARY-<hex>``), so a
leak anywhere (logs, Prefect's database, Redis, the mirror tables) is found by a plain search.
The session's Prefect API credential (``PREFECT_API_AUTH_STRING``) is searched for the same way.
Faults that stop a server (MariaDB, Redis) use a private instance on a free port, so the
shared servers other tests and engineers use never go down.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from tests.support.batch_env import configure_env
from tests.support.faults import (
    AllLogs,
    FaultEnv,
    Leaks,
    PrivateMariaDB,
    PrivateRedis,
    drain_prefect_logs,
    make_fault_env,
    scan_for_tokens,
)


@pytest.fixture
def canary() -> str:
    return f"CANARY-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def fault_env(prefect_api, mysql_url: str, redis_url: str, redis_prefix: str, canary: str,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultEnv]:
    """Own MariaDB database (shared server), own Redis prefix, in-thread simulator (3 ms latency)."""
    yield from make_fault_env(monkeypatch, canary, mysql_url, redis_url, redis_prefix)


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch):
    return lambda **env: configure_env(monkeypatch, **env)


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item):
    """With ``all_logs`` the root logger is at DEBUG: keep the console and pytest's own capture
    at WARNING meanwhile (formatting ~25k records per batch costs seconds); ``all_logs`` keeps all."""
    quiet = []
    if "all_logs" in getattr(item, "fixturenames", ()):
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, AllLogs) and handler.level < logging.WARNING:
                quiet.append((handler, handler.level))
                handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in quiet:
            handler.setLevel(level)


@pytest.fixture
def all_logs() -> Iterator[AllLogs]:
    """Root and every logger at DEBUG for the test (what an operator chasing a bug would switch on)."""
    handler = AllLogs()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    extra = [logging.getLogger(n) for n in ("prefect", "sqlalchemy", "httpx", "httpcore", "batchlib", "db")]
    olds = [(lg, lg.level) for lg in extra]
    for lg in extra:
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        drain_prefect_logs()
        root.removeHandler(handler)
        root.setLevel(old)
        for lg, level in olds:
            lg.setLevel(level)


@pytest.fixture
def leak_check(prefect_server, all_logs: AllLogs):
    """``leak_check(env, *extra_texts)`` asserts 0 canary, issued token or Prefect credential found anywhere."""

    def check(env: FaultEnv, *texts: str) -> Leaks:
        drain_prefect_logs()  # every record this process logged is in Prefect's database before the dump
        leaks = scan_for_tokens(env, prefect_server, all_logs, *texts)
        assert leaks.total == 0, f"tokens found: {leaks.found}: " + "\n".join(leaks.samples)
        assert all_logs.records, "the log capture saw nothing: the scan would be meaningless"
        return leaks

    return check


@pytest.fixture(scope="module")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB()
    server.install()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()
