"""PlatformClient against the real simulator over loopback: the call log is the witness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from batchcore.errors import (
    BadPlatformResponse,
    PlatformError,
    PlatformRejected,
    PlatformUnavailable,
    TokenRefreshFailed,
)
from batchlib.backoff import RetryPolicy
from batchlib.platform_client import AccountState, InMemoryTokenStore, PlatformClient
from simulators.account_platform import Knobs, PlatformSimulator
from tests.support.services import settle

TENANT = 7
ACCOUNTS = 120


@pytest.fixture
def sim(module_sim: PlatformSimulator) -> PlatformSimulator:
    """Fresh deterministic accounts (account_id n is uid u7-00000n), default knobs, empty log."""
    settle(module_sim)
    module_sim.configure(**Knobs().as_dict())
    module_sim.seed({TENANT: ACCOUNTS, 8: 20}, banned_fraction=0.1, seed=1)
    module_sim.reset()
    return module_sim


class World:
    """The simulator's accounts loaded into an in-memory token store, keyed by account id."""

    def __init__(self, sim: PlatformSimulator) -> None:
        self.sim = sim
        self.store = InMemoryTokenStore()
        self.uid: dict[int, str] = {}
        self.status: dict[int, str] = {}
        self.tokens: set[str] = set()
        for account in sim.accounts(TENANT):
            account_id = int(account["uid"].split("-")[1])
            self.store.put(account_id, account["access_token"], account["refresh_token"])
            self.uid[account_id] = account["uid"]
            self.status[account_id] = account["status"]
            self.tokens |= {account["access_token"], account["refresh_token"]}

    def alive(self, n: int = 1) -> list[int]:
        return [i for i in sorted(self.uid) if self.status[i] == "alive"][:n]

    def banned(self) -> int:
        return next(i for i in sorted(self.uid) if self.status[i] == "banned")

    def run(self, make: Callable[[PlatformClient], Coroutine[Any, Any, Any]], **options: Any) -> tuple[Any, PlatformClient]:
        options["retry"] = RetryPolicy(options.pop("max_retries", 3), base=0.01, cap=0.05)

        async def main() -> tuple[Any, PlatformClient]:
            async with PlatformClient(self.sim.url, self.store, **options) as client:
                return await make(client), client

        return asyncio.run(main())

    def all_tokens(self) -> set[str]:
        """Every token seen so far, including the ones issued by refreshes."""
        current = {t for a in self.sim.accounts() for t in (a["access_token"], a["refresh_token"])}
        return self.tokens | current


def pool_is_idle(client: PlatformClient) -> bool:
    """Every request released its pooled connection (also after resets and abandoned bodies)."""
    return client._wire.idle  # noqa: SLF001 - white-box check of the connection pool


@pytest.fixture
def world(sim: PlatformSimulator) -> World:
    return World(sim)


def test_refresh_is_single_flight_under_50_concurrent_401s(world: World) -> None:
    (account_id,) = world.alive()
    uid = world.uid[account_id]
    world.sim.configure(latency_ms=20)  # all 50 calls are in flight before the first 401 returns
    world.sim.expire([uid])
    results, client = world.run(lambda c: asyncio.gather(*(c.get_me(account_id) for _ in range(50))))
    assert {r.uid for r in results} == {uid}
    stats = world.sim.stats()
    assert stats["refreshes"] == 1 and stats["by_endpoint"]["POST /v1/oauth/refresh"] == 1
    log = [(c["endpoint"], c["token_version"], c["status"]) for c in world.sim.calls(uid=uid)]
    assert log.count(("GET /v1/me", 1, 401)) == 50
    assert log.count(("GET /v1/me", 2, 200)) == 50
    assert world.store.get(account_id).version == 2 and client.refreshes == 1


def test_retry_after_is_respected(world: World) -> None:
    (account_id,) = world.alive()
    uid = world.uid[account_id]
    world.sim.configure(retry_after_s=0.4)
    world.sim.script(uid, 429, 429)
    state, client = world.run(lambda c: c.get_me(account_id))
    assert state.uid == uid and client.attempts == 3
    calls = world.sim.calls(uid=uid)
    assert [c["status"] for c in calls] == [429, 429, 200]
    for before, after in zip(calls, calls[1:]):
        assert after["t"] >= before["end"] + 0.4


def test_retry_after_under_random_rate_limits(world: World) -> None:
    ids = world.alive(20)
    world.sim.configure(rate_429=0.3, retry_after_s=0.2, rng_seed=7)

    async def all_of(c: PlatformClient) -> list[Any]:
        return await asyncio.gather(*(c.get_me(i) for i in ids))

    results, client = world.run(all_of, max_retries=8)
    assert len(results) == 20
    limited = 0
    for account_id in ids:
        calls = world.sim.calls(uid=world.uid[account_id])
        for before, after in zip(calls, calls[1:]):
            assert before["status"] == 429
            assert after["t"] >= before["end"] + 0.2
            limited += 1
    assert limited > 0 and client.attempts == 20 + limited


def test_5xx_resets_garbage_and_timeouts_are_recovered(world: World) -> None:
    (account_id,) = world.alive()
    uid = world.uid[account_id]
    world.sim.configure(hang_s=0.5)
    world.sim.script(uid, 500, "reset", "hang")

    async def get_me(c: PlatformClient) -> AccountState:
        state = await c.get_me(account_id)
        assert pool_is_idle(c)
        return state

    state, client = world.run(get_me, max_retries=3, read_timeout=0.2)
    assert state.uid == uid
    assert client.attempts == 4 <= client.retry.attempts
    world.sim.script(uid, "garbage", 503)
    _, client = world.run(lambda c: c.change_nickname(account_id, "neo"))
    assert client.attempts == 3
    assert world.sim.calls(uid=uid)[-1]["status"] == 200


def test_random_5xx_within_the_budget(world: World) -> None:
    ids = world.alive(60)
    world.sim.configure(error_rate_5xx=0.2, rng_seed=11)

    async def all_of(c: PlatformClient) -> list[Any]:
        return await asyncio.gather(*(c.get_me(i) for i in ids), return_exceptions=True)

    results, client = world.run(all_of, max_retries=6)
    assert not [r for r in results if isinstance(r, Exception)]
    assert world.sim.stats()["total"] == client.attempts
    for account_id in ids:
        assert len(world.sim.calls(uid=world.uid[account_id])) <= client.retry.attempts


@pytest.mark.parametrize(
    ("operation", "reason"),
    [
        (lambda c, w: c.change_nickname(w.banned(), "x"), "account_banned (HTTP 403)"),
        (lambda c, w: c.change_nickname(w.alive()[0], "x" * 40), "invalid_nickname (HTTP 422)"),
        (lambda c, w: c.change_avatar(w.alive()[0], "not a url"), "invalid_avatar_url (HTTP 422)"),
        (lambda c, w: c.add_friend(w.alive()[0], "u9-000001"), "unknown_friend (HTTP 404)"),
    ],
)
def test_terminal_errors_are_not_retried(world: World, operation: Any, reason: str) -> None:
    with pytest.raises(PlatformRejected) as info:
        world.run(lambda c: operation(c, world))
    assert info.value.reason == reason
    assert world.sim.stats()["total"] == 1


def test_refused_refresh_is_tried_once(world: World) -> None:
    (account_id,) = world.alive()
    uid = world.uid[account_id]
    world.sim.configure(refresh_fail_uids=[uid])
    world.sim.expire([uid])

    async def many(c: PlatformClient) -> list[Any]:
        return await asyncio.gather(*(c.get_me(account_id) for _ in range(10)), return_exceptions=True)

    results, _ = world.run(many)
    assert all(isinstance(r, TokenRefreshFailed) and r.reason == "refresh token rejected" for r in results)
    assert world.sim.stats()["by_endpoint"]["POST /v1/oauth/refresh"] == 1


def test_big_body_is_cut_at_the_cap(world: World) -> None:
    (account_id,) = world.alive()
    world.sim.configure(big_body_bytes=50_000_000)
    world.sim.script(world.uid[account_id], "big")
    started = time.monotonic()

    async def too_big(client: PlatformClient) -> None:
        try:
            await client.get_me(account_id)
        finally:
            assert pool_is_idle(client)

    with pytest.raises(BadPlatformResponse, match="larger than"):
        world.run(too_big, max_body_bytes=1_000_000)
    assert time.monotonic() - started < 3
    settle(world.sim)  # the simulator notices the closed connection a moment later
    assert world.sim.stats()["total"] == 1


def test_no_token_in_logs_or_errors(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "batchlib", "uvicorn", "uvicorn.error"):
        caplog.set_level(logging.DEBUG, logger=name)
    a, b, c = world.alive(3)
    banned = world.banned()
    world.sim.configure(retry_after_s=0.05, refresh_fail_uids=[world.uid[c]])
    world.sim.expire([world.uid[a], world.uid[c]])
    world.sim.script(world.uid[a], 429, 500, "reset", "garbage")
    world.sim.script(world.uid[b], "garbage", "garbage")

    async def collect(client: PlatformClient) -> list[Any]:
        out: list[Any] = []
        for make in (
            lambda: client.get_me(a),
            lambda: client.change_nickname(a, "neo"),
            lambda: client.get_me(b),
            lambda: client.get_me(c),
            lambda: client.change_nickname(banned, "x"),
            lambda: client.add_friend(a, "u9-000009"),
        ):
            try:
                out.append(await make())
            except PlatformError as exc:
                out.append(exc)
        return out

    results, client = world.run(collect, max_retries=5)
    errors = [r for r in results if isinstance(r, Exception)]
    assert [type(e).__name__ for e in errors] == [
        "BadPlatformResponse",
        "TokenRefreshFailed",
        "PlatformRejected",
        "PlatformRejected",
    ]
    assert client.refreshes == 2 and caplog.records
    tokens = world.all_tokens()
    assert len(tokens) > 2 * ACCOUNTS
    texts = [caplog.text] + [f"{e!s} {e!r} {e.reason} {e.__cause__!r}" for e in errors]
    texts += [repr(world.store.get(i)) for i in (a, b, c)]
    texts += [f"{r.getMessage()} {r.args!r}" for r in caplog.records]
    leaked = {t for t in tokens for text in texts if t in text}
    assert not leaked


def test_500_concurrent_requests_are_served(world: World) -> None:
    ids = world.alive(100)
    world.sim.configure(latency_ms=1000)  # long enough that the burst overlaps even on a busy host

    async def burst(c: PlatformClient) -> list[Any]:
        return await asyncio.gather(*(c.get_me(i) for i in ids for _ in range(5)))

    results, client = world.run(burst, max_connections=500)
    assert len(results) == 500 and client.attempts == 500
    stats = world.sim.stats()
    assert stats["total"] == 500 and stats["max_in_flight"] >= 400  # served side by side, not one by one
    assert stats["max_in_flight_by_tenant"] == {str(TENANT): stats["max_in_flight"]}


def test_per_tenant_concurrency_is_visible(world: World) -> None:
    ids = world.alive(40)
    world.sim.configure(latency_ms=20)

    async def limited(c: PlatformClient) -> None:
        gate = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with gate:
                await c.get_me(i)

        await asyncio.gather(*(one(i) for i in ids))

    world.run(limited)
    assert world.sim.stats()["max_in_flight_by_tenant"][str(TENANT)] == 8


def test_a_configured_proxy_carries_every_request(world: World) -> None:
    """platform_url names a host that does not resolve; only the proxy (the simulator, which serves
    absolute-form requests like a forward proxy would pass them on) can answer."""
    (account_id,) = world.alive()
    unreachable = "http://platform.invalid:8900"

    async def via(proxy: str | None) -> Any:
        async with PlatformClient(unreachable, world.store, proxy=proxy, retry=RetryPolicy(0)) as client:
            return await client.get_me(account_id)

    assert asyncio.run(via(world.sim.url)).uid == world.uid[account_id]
    assert [c["uid"] for c in world.sim.calls()] == [world.uid[account_id]]
    with pytest.raises(PlatformUnavailable, match="connection error"):
        asyncio.run(via(None))
