"""Flows under Prefect's test harness against real MariaDB, Redis and the platform simulator."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from simulators.kubo import KuboSimulator
from tests.support.batch_env import BatchEnv, configure_env, make_batch_env


@pytest.fixture
def batch_env(
    prefect_api: None, mysql_url: str, redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BatchEnv]:
    yield from make_batch_env(monkeypatch, mysql_url, redis_url, redis_prefix)


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch):
    """Change BATCH_* settings for the rest of the test."""
    return lambda **env: configure_env(monkeypatch, **env)


@pytest.fixture
def kubo(batch_env: BatchEnv, configure) -> Iterator[KuboSimulator]:
    """A Kubo RPC stand-in with 100 pins, set as the node of every tenant (BATCH_KUBO_URL)."""
    with KuboSimulator(pins=100, seed=1) as sim:
        configure(kubo_url=sim.url)
        yield sim


@pytest.fixture
def unit_deployment(batch_env) -> dict[str, str]:
    """account-check deployed under a unique name on a pool no worker polls."""
    import asyncio

    from deployments.bootstrap import ensure_work_pool
    from flows.account_check import account_check

    suffix = uuid.uuid4().hex[:8]
    pool = f"unit-pool-{suffix}"
    asyncio.run(ensure_work_pool(pool))
    account_check.to_deployment(name=f"unit-{suffix}", work_pool_name=pool).apply()
    return {"account_check": f"account-check/unit-{suffix}"}
