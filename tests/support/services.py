"""Where the shared test services are (MariaDB, Redis, Prefect) and helpers to use them; fixtures live in tests/conftest.py."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator

import pymysql
from sqlalchemy import Engine

from db import make_engine, upgrade

MYSQL_HOST = os.environ.get("TEST_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("TEST_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("TEST_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("TEST_MYSQL_PASSWORD", "")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def mysql_admin() -> pymysql.connections.Connection:
    return pymysql.connect(
        host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, password=MYSQL_PASSWORD, autocommit=True
    )


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



def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on ``url`` after every migration, disposed afterwards (yield from it in a fixture)."""
    upgrade(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
