"""The account platform simulator honours docs/platform-api.md, over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulators.account_platform import Knobs, PlatformSimulator, make_token
from tests.support.services import settle


@pytest.fixture
def sim(module_sim: PlatformSimulator) -> PlatformSimulator:
    """The shared simulator with fresh accounts, default knobs and an empty call log."""
    settle(module_sim)
    module_sim.configure(**Knobs().as_dict())
    module_sim.seed({7: 20, 8: 20}, banned_fraction=0.2, restricted_fraction=0.1, seed=1)
    module_sim.reset()
    return module_sim


@pytest.fixture
def http(sim: PlatformSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, trust_env=False, timeout=10) as client:
        yield client


def bearer(account: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {account['access_token']}"}


def first(sim: PlatformSimulator, status: str, tenant_id: int = 7) -> dict[str, Any]:
    return next(a for a in sim.accounts(tenant_id) if a["status"] == status)


def test_seed_is_deterministic(sim: PlatformSimulator) -> None:
    before = sim.accounts(7)
    sim.seed({7: 20}, banned_fraction=0.2, restricted_fraction=0.1, seed=1)
    assert [(a["uid"], a["status"], a["access_token"]) for a in sim.accounts(7)] == [
        (a["uid"], a["status"], a["access_token"]) for a in before
    ]
    assert before[0]["uid"] == "u7-000001" and before[0]["access_token"] == make_token("at", 1, "u7-000001", 1)
    assert {a["status"] for a in sim.accounts()} == {"alive", "banned", "restricted"}
    assert len(sim.accounts(8)) == 20


def test_me_and_changes(sim: PlatformSimulator, http: httpx.Client) -> None:
    account = first(sim, "alive")
    me = http.get("/v1/me", headers=bearer(account)).json()
    assert me == {k: account[k] for k in ("uid", "status", "nickname", "avatar_url")}
    assert http.post("/v1/me/nickname", headers=bearer(account), json={"nickname": "neo"}).json() == {
        "uid": account["uid"],
        "nickname": "neo",
    }
    reply = http.post("/v1/me/avatar", headers=bearer(account), json={"avatar_url": "https://a/b.png"})
    assert reply.json() == {"uid": account["uid"], "avatar_url": "https://a/b.png"}
    assert http.get("/v1/me", headers=bearer(account)).json()["nickname"] == "neo"
    for bad in ("", "x" * 33, "tab\there", 5):
        reply = http.post("/v1/me/nickname", headers=bearer(account), json={"nickname": bad})
        assert reply.status_code == 422 and reply.json()["error"] == "invalid_nickname"
    reply = http.post("/v1/me/avatar", headers=bearer(account), json={"avatar_url": "ftp://x"})
    assert reply.status_code == 422 and reply.json()["error"] == "invalid_avatar_url"


def test_friends(sim: PlatformSimulator, http: httpx.Client) -> None:
    a, b = [x for x in sim.accounts(7) if x["status"] == "alive"][:2]
    add = lambda who, uid: http.post("/v1/me/friends", headers=bearer(who), json={"friend_uid": uid})  # noqa: E731
    assert add(a, b["uid"]).json() == {"status": "sent"}
    assert add(a, b["uid"]).json() == {"status": "pending"}
    assert add(b, a["uid"]).json() == {"status": "sent"}  # mutual: now friends
    assert add(a, b["uid"]).json() == {"status": "already_friends"}
    reply = add(a, "u9-999999")
    assert reply.status_code == 404 and reply.json()["error"] == "unknown_friend"
    assert add(a, a["uid"]).status_code == 422


def test_banned_accounts_read_but_cannot_change(sim: PlatformSimulator, http: httpx.Client) -> None:
    banned = first(sim, "banned")
    assert http.get("/v1/me", headers=bearer(banned)).json()["status"] == "banned"
    for path, body in (("/v1/me/nickname", {"nickname": "x"}), ("/v1/me/friends", {"friend_uid": "u7-000001"})):
        reply = http.post(path, headers=bearer(banned), json=body)
        assert reply.status_code == 403 and reply.json()["error"] == "account_banned"


def test_refresh_rotates_both_tokens(sim: PlatformSimulator, http: httpx.Client) -> None:
    account = first(sim, "alive")
    reply = http.post("/v1/oauth/refresh", json={"refresh_token": account["refresh_token"]})
    assert reply.status_code == 200
    tokens = reply.json()
    assert set(tokens) == {"access_token", "refresh_token", "expires_in"}
    old = http.get("/v1/me", headers=bearer(account))
    assert old.status_code == 401 and old.json()["error"] == "invalid_token"
    assert http.get("/v1/me", headers=bearer(tokens)).status_code == 200
    again = http.post("/v1/oauth/refresh", json={"refresh_token": account["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    log = sim.calls(uid=account["uid"])
    assert [(c["endpoint"], c["token_version"], c["status"]) for c in log] == [
        ("POST /v1/oauth/refresh", 1, 200),
        ("GET /v1/me", 1, 401),
        ("GET /v1/me", 2, 200),
        ("POST /v1/oauth/refresh", 2, 400),
    ]
    assert sim.stats()["refreshes"] == 1
    assert next(a for a in sim.accounts(7) if a["uid"] == account["uid"])["token_version"] == 2


def test_expire_and_unknown_tokens(sim: PlatformSimulator, http: httpx.Client) -> None:
    account = first(sim, "alive")
    assert sim.expire([account["uid"]]) == 1
    reply = http.get("/v1/me", headers=bearer(account))
    assert reply.status_code == 401 and reply.json()["error"] == "token_expired"
    assert http.get("/v1/me").json()["error"] == "invalid_token"
    assert sim.expire(tenant_id=8) == 20
    assert http.get("/v1/me", headers=bearer(sim.accounts(8)[0])).json()["error"] == "token_expired"


def test_refresh_fail_uids_and_fail_uids(sim: PlatformSimulator, http: httpx.Client) -> None:
    a, b = [x for x in sim.accounts(7) if x["status"] == "alive"][:2]
    sim.configure(refresh_fail_uids=[a["uid"]], fail_uids=[b["uid"]])
    assert http.post("/v1/oauth/refresh", json={"refresh_token": a["refresh_token"]}).status_code == 400
    assert [http.get("/v1/me", headers=bearer(b)).status_code for _ in range(3)] == [500] * 3


def test_scripted_faults(sim: PlatformSimulator, http: httpx.Client) -> None:
    account = first(sim, "alive")
    sim.configure(retry_after_s=2, big_body_bytes=200_000)
    sim.script(account["uid"], 429, 503, "reset", "garbage", "big")
    reply = http.get("/v1/me", headers=bearer(account))
    assert reply.status_code == 429 and reply.headers["retry-after"] == "2"
    assert http.get("/v1/me", headers=bearer(account)).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        http.get("/v1/me", headers=bearer(account))
    garbage = http.get("/v1/me", headers=bearer(account))
    assert garbage.status_code == 200
    with pytest.raises(ValueError):
        garbage.json()
    assert len(http.get("/v1/me", headers=bearer(account)).content) == 200_000
    assert http.get("/v1/me", headers=bearer(account)).status_code == 200  # script used up
    assert [c["status"] for c in sim.calls(uid=account["uid"])] == [429, 503, 0, 200, 200, 200]


def test_random_faults_follow_the_knobs(sim: PlatformSimulator, http: httpx.Client) -> None:
    account = first(sim, "alive")
    sim.configure(error_rate_5xx=0.5, rng_seed=3)
    statuses = [http.get("/v1/me", headers=bearer(account)).status_code for _ in range(200)]
    failures = sum(s >= 500 for s in statuses)
    assert 60 < failures < 140 and set(statuses) <= {200, 500, 502, 503}
    sim.configure(error_rate_5xx=0, timeout_rate=1, hang_s=0.05)
    assert http.get("/v1/me", headers=bearer(account)).status_code == 504


def test_config_validation(sim: PlatformSimulator, http: httpx.Client) -> None:
    assert http.post("/_sim/config", json={"nope": 1}).status_code == 400
    assert http.post("/_sim/config", json={"rate_429": 2}).status_code == 400
    assert http.post("/_sim/config", json={"fail_uids": "u7-1"}).status_code == 400
    assert sim.configure(latency_ms=5)["latency_ms"] == 5 and sim.config()["latency_ms"] == 5


def test_register_replaces_and_lists_current_tokens(sim: PlatformSimulator, http: httpx.Client) -> None:
    spec = {"uid": "x-1", "tenant_id": 9, "status": "alive", "nickname": "x", "avatar_url": None,
            "access_token": "at_custom", "refresh_token": "rt_custom", "expires_in": 60}
    assert sim.register([spec, {**spec, "nickname": "y"}]) == 2
    (listed,) = sim.accounts(9)
    assert listed["nickname"] == "y" and listed["access_token"] == "at_custom"
    assert http.get("/v1/me", headers={"Authorization": "Bearer at_custom"}).json()["uid"] == "x-1"


def test_stats_track_in_flight_per_tenant_and_reset(sim: PlatformSimulator) -> None:
    import asyncio

    sim.configure(latency_ms=100)
    seven, eight = sim.accounts(7)[:15], sim.accounts(8)[:5]

    async def burst() -> None:
        async with httpx.AsyncClient(base_url=sim.url, trust_env=False) as client:
            await asyncio.gather(*(client.get("/v1/me", headers=bearer(a)) for a in seven + eight))

    asyncio.run(burst())
    stats = sim.stats()
    assert stats["total"] == 20 and stats["by_endpoint"] == {"GET /v1/me": 20}
    assert stats["max_in_flight_by_tenant"] == {"7": 15, "8": 5}
    assert stats["max_in_flight"] == 20 and stats["in_flight"] == 0
    calls = sim.calls()
    assert all(c["end"] - c["t"] >= 0.1 for c in calls)
    assert sim.calls(since=stats["now"]) == []
    sim.reset()
    assert sim.stats()["total"] == 0 and sim.calls() == []


def test_subprocess_mode_and_cli() -> None:
    with PlatformSimulator(subprocess=True, latency_ms=1) as sim:
        assert sim.seed({5: 3}) == 3
        account = sim.accounts(5)[0]
        reply = httpx.get(f"{sim.url}/v1/me", headers=bearer(account), trust_env=False)
        assert reply.status_code == 200
        assert sim.calls()[0]["uid"] == "u5-000001"
        assert sim.config()["latency_ms"] == 1
