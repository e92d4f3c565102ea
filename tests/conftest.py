"""Fixtures that create real resources with unique names and drop them afterwards."""

from __future__ import annotations

import base64
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pymysql
import pytest

MYSQL_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def mysql_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
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


def prefect_db_dump(prefect_server) -> str:
    """Everything the server stored (flow and task runs, states, parameters, logs), as SQL text."""
    from deployments.local_server import PG_URL

    base = PG_URL.rsplit("/", 1)[0]
    out = subprocess.run(["pg_dump", "--data-only", f"{base}/{prefect_server.db}"],
                         capture_output=True, text=True, check=True)
    return out.stdout


def auth_needles(auth_string: str | None) -> list[str]:
    """The Prefect API credential in each form it travels: ``user:password``, the password, and
    the base64 of a ``Basic`` header; searched for in logs and dumps like the token canaries."""
    if not auth_string:
        return []
    return [auth_string, auth_string.split(":", 1)[1], base64.b64encode(auth_string.encode()).decode()]


@pytest.fixture(scope="module")
def module_sim():
    """One platform simulator per test module (tests reseed and reset it)."""
    from simulators.account_platform import PlatformSimulator

    with PlatformSimulator() as sim:
        yield sim


def settle(sim, timeout: float = 5.0) -> None:
    """Wait for calls still hanging from an earlier test, so they do not land in this one's log."""
    deadline = time.monotonic() + timeout
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)


async def delete_batch_limits() -> None:
    """Remove the ``batch:`` global concurrency limits runs created (they outlive a test and
    would override the next test's BATCH_CONCURRENCY, which is only their default)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for limit in await client.read_global_concurrency_limits(limit=200):
            if limit.name.startswith("batch:"):
                await client.delete_global_concurrency_limit_by_name(limit.name)


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

