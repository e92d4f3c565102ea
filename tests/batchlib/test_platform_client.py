"""PlatformClient over a scripted wire (tests/support/wire.py): retries, refresh, caps, error texts.

The wire's own behaviour (timeouts, caps while streaming, resets) is tested against real servers
in tests/unit/test_http_wire.py and tests/batchlib/test_platform_client_sim.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from batchcore.errors import (
    BadPlatformResponse,
    PlatformRejected,
    PlatformUnavailable,
    RateLimited,
    TokenRefreshFailed,
)
from batchcore.settings import Settings
from batchlib.backoff import RetryPolicy
from batchlib.http_wire import Reply
from batchlib.platform_client import AccountState, Credentials, InMemoryTokenStore, PlatformClient
from tests.support.wire import Handler, ScriptedWire, Sent, reply, sequence

pytestmark = pytest.mark.unit

ACCESS, REFRESH = "at_secret_access_0001", "rt_secret_refresh_0001"
NEW_ACCESS, NEW_REFRESH = "at_secret_access_0002", "rt_secret_refresh_0002"
ME = {"uid": "u7-000001", "status": "alive", "nickname": "bob", "avatar_url": None}

class Harness:
    """A client on a scripted wire whose sleeps are recorded instead of slept; ``options`` named
    like a ``RetryPolicy`` field go to its policy, the others to the client."""

    def __init__(self, handler: Handler, **options: Any) -> None:
        self.wire = ScriptedWire(handler)
        self.requests = self.wire.sent
        self.sleeps: list[float] = []
        self.store = InMemoryTokenStore()
        self.store.put(1, ACCESS, REFRESH)

        async def fake_sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.sleep(0)

        retry = {name: options.pop(name) for name in ("max_retries", "base", "cap", "retry_after_max") if name in options}
        self.client = PlatformClient(
            "http://platform.test",
            self.store,
            wire=self.wire,
            retry=RetryPolicy(**retry, rng=random.Random(1), sleep=fake_sleep),
            **options,
        )

    def run(self, make: Callable[[PlatformClient], Coroutine[Any, Any, Any]]) -> Any:
        async def main() -> Any:
            async with self.client:
                return await make(self.client)

        return asyncio.run(main())

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


def ok(payload: Any = ME) -> Reply:
    return reply(200, json=payload)


def error(status: int, code: str, **headers: str) -> Reply:
    return reply(status, json={"error": code, "message": f"{code} happened"}, headers=headers)


def test_get_me_sends_the_token_in_the_header_only() -> None:
    h = Harness(sequence(ok()))
    state = h.run(lambda c: c.get_me(1))
    assert state == AccountState("u7-000001", "alive", "bob", None)
    (request,) = h.requests
    assert request.headers["authorization"] == f"Bearer {ACCESS}"
    assert ACCESS not in request.path and request.content is None
    assert h.client.attempts == 1


def test_retry_after_is_honoured() -> None:
    h = Harness(sequence(error(429, "rate_limited", **{"Retry-After": "7"}), ok()))
    assert h.run(lambda c: c.get_me(1)).uid == "u7-000001"
    assert h.sleeps == [7.0]
    assert h.client.attempts == 2


def test_retry_after_is_capped_and_garbage_falls_back_to_backoff() -> None:
    h = Harness(
        sequence(
            error(429, "rate_limited", **{"Retry-After": "100"}),
            error(429, "rate_limited", **{"Retry-After": "soon"}),
            error(429, "rate_limited"),
            ok(),
        ),
        retry_after_max=30,
        base=0.2,
    )
    h.run(lambda c: c.get_me(1))
    assert h.sleeps[0] == 30
    assert 0 <= h.sleeps[1] <= 0.4 and 0 <= h.sleeps[2] <= 0.8  # full jitter, retries 1 and 2


def test_rate_limited_past_the_budget() -> None:
    h = Harness(sequence(error(429, "rate_limited", **{"Retry-After": "1"})), max_retries=2)
    with pytest.raises(RateLimited) as info:
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == 3
    assert info.value.reason == "rate limited (HTTP 429); gave up after 3 attempts"


def test_5xx_and_connection_errors_are_retried() -> None:
    h = Harness(sequence(error(503, "unavailable"), "connection error (ClientConnectorError)", "timeout (ReadTimeout)", ok()))
    assert h.run(lambda c: c.get_me(1)).status == "alive"
    assert h.client.attempts == 4
    assert len(h.sleeps) == 3


def test_5xx_past_the_budget_is_unavailable() -> None:
    h = Harness(sequence(reply(502, text="<html>bad gateway</html>")), max_retries=3)
    with pytest.raises(PlatformUnavailable) as info:
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == 4 == h.client.retry.attempts
    assert info.value.reason == "platform error (HTTP 502); gave up after 4 attempts"


def test_a_transport_failure_is_retried_and_its_reason_kept() -> None:
    h = Harness(sequence("connection error (ServerDisconnectedError)"), max_retries=1)
    with pytest.raises(PlatformUnavailable, match=r"connection error \(ServerDisconnectedError\); gave up after 2"):
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == 2


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (error(422, "invalid_nickname"), "invalid_nickname (HTTP 422)"),
        (error(403, "account_banned"), "account_banned (HTTP 403)"),
        (error(404, "unknown_friend"), "unknown_friend (HTTP 404)"),
        (reply(400, json={"error": f"bad {ACCESS}"}), "rejected (HTTP 400)"),
        (reply(409, text="<html>conflict</html>"), "rejected (HTTP 409)"),
    ],
)
def test_other_4xx_are_terminal(response: Reply, reason: str) -> None:
    h = Harness(sequence(response, ok()))
    with pytest.raises(PlatformRejected) as info:
        h.run(lambda c: c.change_nickname(1, "x"))
    assert info.value.reason == reason
    assert info.value.status_code == response.status
    assert h.client.attempts == 1 and h.sleeps == []


def test_body_over_the_cap_is_refused_without_retry() -> None:
    h = Harness(sequence(Reply(200, {}, None)), max_body_bytes=1000)  # the wire stopped reading at the cap
    with pytest.raises(BadPlatformResponse, match="larger than 1000 bytes"):
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == 1


def test_garbage_body_is_retried_once() -> None:
    html = reply(200, text="<html>proxy error</html>")
    h = Harness(sequence(html, ok()))
    assert h.run(lambda c: c.get_me(1)).uid == "u7-000001"
    assert h.client.attempts == 2

    h = Harness(sequence(html, reply(200, content=b'{"uid": "u7-0')))
    with pytest.raises(BadPlatformResponse, match="unreadable response body"):
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == 2


@pytest.mark.parametrize(
    ("payload", "attempts"),
    [
        ({"uid": 7, "status": "alive", "nickname": "n", "avatar_url": None}, 1),
        ({**ME, "status": "zombie"}, 1),
        ([1, 2], 2),  # valid JSON but not an object: unreadable, retried once
    ],
)
def test_wrong_shape_is_a_bad_response(payload: Any, attempts: int) -> None:
    h = Harness(sequence(reply(200, json=payload)))
    with pytest.raises(BadPlatformResponse):
        h.run(lambda c: c.get_me(1))
    assert h.client.attempts == attempts


def test_add_friend_returns_the_status() -> None:
    h = Harness(sequence(ok({"status": "pending"})))
    assert h.run(lambda c: c.add_friend(1, "u7-000002")) == "pending"
    assert h.requests[0].json() == {"friend_uid": "u7-000002"}


def token_platform(refresh_response: Reply | None = None) -> tuple[Handler, dict[str, int]]:
    """A platform accepting only NEW_ACCESS; the refresh endpoint rotates to it (or answers as given)."""
    counts = {"refresh": 0}

    def handler(request: Sent) -> Reply:
        if request.path == "/v1/oauth/refresh":
            counts["refresh"] += 1
            assert "authorization" not in request.headers
            assert request.json() == {"refresh_token": REFRESH}
            if refresh_response is not None:
                return refresh_response
            return ok({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 3600})
        if request.headers.get("authorization") == f"Bearer {NEW_ACCESS}":
            return ok()
        return error(401, "token_expired")

    return handler, counts


def test_expired_token_is_refreshed_and_stored() -> None:
    handler, counts = token_platform()
    h = Harness(handler)
    h.run(lambda c: c.get_me(1))
    assert counts["refresh"] == 1
    assert h.store.get(1) == Credentials(NEW_ACCESS, NEW_REFRESH, 2)
    assert h.paths() == ["/v1/me", "/v1/oauth/refresh", "/v1/me"]


def test_refresh_is_single_flight_per_account() -> None:
    handler, counts = token_platform()

    async def slow(request: Sent) -> Reply | str:
        await asyncio.sleep(0.01)  # all 50 calls are in flight before the first 401 comes back
        return handler(request)

    h = Harness(slow)
    results = h.run(lambda c: asyncio.gather(*(c.get_me(1) for _ in range(50))))
    assert len(results) == 50
    assert counts["refresh"] == 1 and h.client.refreshes == 1 and h.store.saves == 1
    assert h.client.attempts == 101


@pytest.mark.parametrize("status", [400, 401])
def test_refused_refresh_fails_once_without_looping(status: int) -> None:
    handler, counts = token_platform(error(status, "invalid_grant"))
    h = Harness(handler)

    async def many(c: PlatformClient) -> list[Any]:
        return await asyncio.gather(*(c.get_me(1) for _ in range(10)), return_exceptions=True)

    results = h.run(many)
    assert all(isinstance(r, TokenRefreshFailed) for r in results)
    assert counts["refresh"] == 1
    assert results[0].reason == "refresh token rejected"
    assert h.store.get(1).version == 1


def test_second_401_after_refresh_does_not_loop() -> None:
    def handler(request: Sent) -> Reply:
        if request.path == "/v1/oauth/refresh":
            return ok({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 60})
        return error(401, "invalid_token")

    h = Harness(handler)
    with pytest.raises(TokenRefreshFailed):
        h.run(lambda c: c.get_me(1))
    assert h.paths() == ["/v1/me", "/v1/oauth/refresh", "/v1/me"]
    assert h.client.attempts <= h.client.max_requests_per_call


def test_no_token_in_reprs_or_error_texts() -> None:
    creds = Credentials(ACCESS, REFRESH, 3)
    assert ACCESS not in repr(creds) and REFRESH not in str(creds) and "version=3" in repr(creds)
    for response in (error(400, f"invalid_grant {REFRESH}"), reply(400, json={"error": REFRESH})):
        handler, _ = token_platform(response)
        h = Harness(handler)
        with pytest.raises(TokenRefreshFailed) as info:
            h.run(lambda c: c.get_me(1))
        text = f"{info.value!s} {info.value!r} {info.value.reason} {info.value.__cause__!r}"
        assert ACCESS not in text and REFRESH not in text


def test_one_client_per_event_loop() -> None:
    h = Harness(sequence(ok()))
    asyncio.run(h.client.get_me(1))
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(h.client.get_me(1))


def test_from_settings() -> None:
    settings = Settings(platform_url="http://sim.test:8900", http_max_retries=5, http_max_body_bytes=1234)
    client = PlatformClient.from_settings(settings, InMemoryTokenStore())
    assert client.retry.max_retries == 5 and client.max_body_bytes == 1234
    assert client.max_requests_per_call == 10
    asyncio.run(client.aclose())


# -- tokens the admin system refreshes itself ---------------------------------------------
OTHER_ACCESS, OTHER_REFRESH = "at_secret_access_0009", "rt_secret_refresh_0009"


def test_a_refused_refresh_uses_the_pair_someone_else_stored_meanwhile() -> None:
    h: Harness

    def handler(request: Sent) -> Reply:
        if request.path == "/v1/oauth/refresh":  # the panel spent the token a moment before us
            h.store.put(1, OTHER_ACCESS, OTHER_REFRESH, version=9)
            return error(400, "invalid_grant")
        return ok() if request.headers["authorization"] == f"Bearer {OTHER_ACCESS}" else error(401, "invalid_token")

    h = Harness(handler)
    assert h.run(lambda c: c.get_me(1)).uid == ME["uid"]
    assert h.paths() == ["/v1/me", "/v1/oauth/refresh", "/v1/me"]
    assert h.store.get(1).refresh_token == OTHER_REFRESH


def test_a_401_after_our_refresh_uses_a_pair_stored_since() -> None:
    h: Harness

    def handler(request: Sent) -> Reply:
        if request.path == "/v1/oauth/refresh":
            return ok({"access_token": NEW_ACCESS, "refresh_token": NEW_REFRESH, "expires_in": 60})
        token = request.headers["authorization"]
        if token == f"Bearer {NEW_ACCESS}":  # rotated again by the panel right after our refresh
            h.store.put(1, OTHER_ACCESS, OTHER_REFRESH, version=9)
        return ok() if token == f"Bearer {OTHER_ACCESS}" else error(401, "invalid_token")

    h = Harness(handler)
    assert h.run(lambda c: c.get_me(1)).uid == ME["uid"]
    assert h.paths() == ["/v1/me", "/v1/oauth/refresh", "/v1/me", "/v1/me"]
    assert h.client.attempts <= h.client.max_requests_per_call


def test_a_refused_refresh_looks_for_a_stored_pair_about_a_second_then_fails() -> None:
    from batchlib.platform_client import RELOAD_PAUSES

    handler, counts = token_platform(error(400, "invalid_grant"))
    h = Harness(handler)
    with pytest.raises(TokenRefreshFailed):
        h.run(lambda c: c.get_me(1))
    assert counts["refresh"] == 1 and h.sleeps == list(RELOAD_PAUSES) and 0.5 <= sum(RELOAD_PAUSES) <= 2
