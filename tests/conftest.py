"""Fixtures that create real resources with unique names and drop them afterwards.

Helpers shared by several test packages live in plain modules (tests/support); this file holds
only fixtures and hooks. A test marked ``unit`` may use none of the fixtures that reach a
service (``SERVICE_FIXTURES``): collection refuses it, so ``-m unit`` runs with no MariaDB,
Redis or Prefect server; with exactly ``-m unit`` the modules whose source does not say
``pytest.mark.unit`` are not even imported (collecting them all costs more than the tests).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.services import (
    MYSQL_HOST,
    MYSQL_PASSWORD,
    MYSQL_PORT,
    MYSQL_USER,
    REDIS_URL,
    delete_batch_limits,
    migrated_engine,
    mysql_admin,
)


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """An empty MariaDB database of its own, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = mysql_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield f"mysql+pymysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{MYSQL_HOST}:{MYSQL_PORT}/{name}?charset=utf8mb4"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mirror.db'}"


@pytest.fixture(params=["mysql", "sqlite"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Run a test on both backends: MariaDB and the embedded SQLite default."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own on the real Redis; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(redis_url)
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (PostgreSQL backend) shared by the whole test session."""
    from deployments.local_server import PrefectServer

    with PrefectServer() as server:
        yield server


@pytest.fixture(scope="session")
def prefect_api(prefect_server):
    """Flows in this process report to the session's real Prefect server, with its credential.

    Subprocesses that tests start from ``os.environ`` (CLI runs) get the credential too.
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_AUTH_STRING")
    os.environ["PREFECT_API_AUTH_STRING"] = prefect_server.auth_string
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url,
                             PREFECT_API_AUTH_STRING: prefect_server.auth_string}):
        yield
        # Send the logs and events still queued while the server is up; otherwise Prefect's
        # workers try at interpreter exit and print "All connection attempts failed".
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    if saved is None:
        os.environ.pop("PREFECT_API_AUTH_STRING", None)
    else:
        os.environ["PREFECT_API_AUTH_STRING"] = saved


@pytest.fixture(scope="module")
def module_sim():
    """One platform simulator per test module (tests reseed and reset it)."""
    from simulators.account_platform import PlatformSimulator

    with PlatformSimulator() as sim:
        yield sim


@pytest.fixture(autouse=True)
def fresh_batch_limits(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test that talks to the session's Prefect server starts without ``batch:`` limits."""
    if "prefect_server" not in request.fixturenames:
        yield
        return
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings

    if "prefect_api" in request.fixturenames:  # this process already talks to the server
        request.getfixturevalue("prefect_api")
        asyncio.run(delete_batch_limits())
    else:
        from prefect.settings import PREFECT_API_AUTH_STRING

        server = request.getfixturevalue("prefect_server")
        updates = {PREFECT_API_URL: server.api_url}
        if getattr(server, "auth_string", None):  # a server behind basic authentication
            updates[PREFECT_API_AUTH_STRING] = server.auth_string
        with temporary_settings(updates):
            asyncio.run(delete_batch_limits())
    yield



@pytest.fixture
def mysql_engine(mysql_url: str) -> Iterator[Engine]:
    """A migrated MariaDB database."""
    yield from migrated_engine(mysql_url)


SERVICE_FIXTURES = frozenset({
    "mysql_url", "any_db_url", "mysql_engine", "engine", "redis_url", "redis_prefix", "prefect_server", "prefect_api",
    "batch_env", "fault_env", "outage_env", "deployed", "system",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``unit`` test that asks for a service fixture is a mistake of the test: refuse the run."""
    wrong = [
        f"{item.nodeid} uses {', '.join(sorted(SERVICE_FIXTURES & set(item.fixturenames)))}"
        for item in items
        if item.get_closest_marker("unit") and SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError("tests marked unit may not use services:\n  " + "\n  ".join(wrong))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m unit``: skip importing test modules that hold no unit test (their source says so)."""
    if (
        config.getoption("markexpr") == "unit"
        and collection_path.suffix == ".py"
        and collection_path.name.startswith("test_")
        and "pytest.mark.unit" not in collection_path.read_text(encoding="utf-8")
    ):
        return True
    return None
