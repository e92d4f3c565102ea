"""Loopback simulator of the account platform; the contract is docs/platform-api.md.

Run it::

    python -m simulators.account_platform --port 8900 --latency-ms 50 --seed-tenants 7:300,8:300

or in-process for tests and benchmarks::

    with PlatformSimulator() as sim:            # PlatformSimulator(subprocess=True): own CPU
        sim.seed({7: 300}, banned_fraction=0.1)
        sim.configure(latency_ms=20, rate_429=0.1)
        ...  # point a PlatformClient at sim.url
        assert sim.stats()["max_in_flight_by_tenant"]["7"] <= 50

The app is a bare ASGI callable; per-request work is a few dict operations plus
``asyncio.sleep`` for latency, so it holds thousands of concurrent requests.
Random faults draw from one seeded RNG; scripted faults (``/_sim/script``) are exact.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

from simulators._http import (
    AbruptClose,
    Receive,
    Scope,
    Send,
    ServerProcess,
    ServerThread,
    announce,
    bind_socket,
    make_server,
    query_params,
    read_body,
    send_body,
    send_json,
    sleep_until,
)

__all__ = ["Knobs", "Account", "PlatformState", "AccountPlatformApp", "PlatformSimulator", "main"]

STATUSES = ("alive", "banned", "restricted")
FAULTS = ("429", "500", "502", "503", "hang", "reset", "garbage", "big", "trickle", "wrong")
ME, NICKNAME, AVATAR, BIO, FRIENDS, REFRESH = (
    "GET /v1/me",
    "POST /v1/me/nickname",
    "POST /v1/me/avatar",
    "POST /v1/me/bio",
    "POST /v1/me/friends",
    "POST /v1/oauth/refresh",
)
ENDPOINTS = frozenset({ME, NICKNAME, AVATAR, BIO, FRIENDS, REFRESH})
NICKNAME_MAX = 32
BIO_MAX = 160
AVATAR_URL_MAX = 512
DROPPED = 0  # call-log status of a connection closed without a complete response


@dataclass(slots=True)
class Knobs:
    """Latency and fault settings; every field is a CLI flag and a ``/_sim/config`` key."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    token_lifetime_s: int = 3600
    error_rate_5xx: float = 0.0
    rate_429: float = 0.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    hang_s: float = 15.0
    trickle_s: float = 15.0  # scripted "trickle": a 200 whose body arrives in small pieces over this long
    trickle_interval_s: float = 0.5
    reset_rate: float = 0.0
    garbage_rate: float = 0.0
    big_body_bytes: int = 0
    big_body_rate: float = 0.05
    fail_uids: list[str] = field(default_factory=list)
    refresh_fail_uids: list[str] = field(default_factory=list)
    rng_seed: int = 0

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a partial update; unknown keys or wrong types raise ValueError."""
        types = {f.name: f.type for f in fields(self)}
        for key, value in changes.items():
            kind = types.get(key)
            if kind is None:
                raise ValueError(f"unknown knob {key!r}")
            if kind == "list[str]":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{key} must be a list of uids")
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{key} must be a non-negative integer")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a non-negative number")
            elif key.endswith("_rate") or key == "error_rate_5xx" or key == "rate_429":
                if value > 1:
                    raise ValueError(f"{key} is a probability between 0 and 1")
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Account:
    uid: str
    tenant_id: int
    status: str
    nickname: str
    avatar_url: str | None
    access_token: str
    refresh_token: str
    token_version: int
    expires_at: float
    friends: set[str] = field(default_factory=set)
    requested: set[str] = field(default_factory=set)
    bio: str = ""

    def public(self) -> dict[str, Any]:
        return {"uid": self.uid, "status": self.status, "nickname": self.nickname, "avatar_url": self.avatar_url}

    def admin(self, now: float) -> dict[str, Any]:
        return {
            **self.public(),
            "bio": self.bio,
            "tenant_id": self.tenant_id,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_version": self.token_version,
            "expires_in": max(0, int(self.expires_at - now)),
        }


def make_token(kind: str, seed: int, uid: str, version: int) -> str:
    """Deterministic token from seed, uid and version (``at_...`` access, ``rt_...`` refresh)."""
    digest = hashlib.blake2b(f"{seed}:{uid}:{version}:{kind}".encode(), digest_size=16).hexdigest()
    return f"{kind}_{digest}"


def _unit(seed: int, uid: str) -> float:
    """A deterministic number in [0, 1) for (seed, uid)."""
    digest = hashlib.blake2b(f"{seed}:{uid}:status".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _error(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


class PlatformState:
    """Accounts, tokens, the bounded call log and the counters of one simulator."""

    def __init__(self, *, log_max: int = 1_000_000) -> None:
        self.knobs = Knobs()
        self.rng = random.Random(0)
        self.token_seed = 0
        self.accounts: dict[str, Account] = {}
        self.by_access: dict[str, tuple[str, int]] = {}  # every issued access token -> (uid, version)
        self.by_refresh: dict[str, str] = {}  # every issued refresh token -> uid
        self.scripts: dict[str, deque[str]] = {}
        self.log: deque[tuple[float, float, str | None, int | None, str, int | None, int]] = deque(maxlen=log_max)
        self.in_flight = 0
        self.in_flight_by_tenant: Counter[int] = Counter()
        self.reset()

    # -- counters -----------------------------------------------------------------
    def reset(self) -> None:
        """Clear the call log and counters; accounts, tokens and knobs stay."""
        self.log.clear()
        self.by_endpoint: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.refreshes = 0
        self.max_in_flight = self.in_flight
        self.max_in_flight_by_tenant: dict[int, int] = {k: v for k, v in self.in_flight_by_tenant.items() if v}

    def enter(self, tenant_id: int | None) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if tenant_id is not None:
            n = self.in_flight_by_tenant[tenant_id] = self.in_flight_by_tenant[tenant_id] + 1
            if n > self.max_in_flight_by_tenant.get(tenant_id, 0):
                self.max_in_flight_by_tenant[tenant_id] = n

    def leave(self, tenant_id: int | None) -> None:
        self.in_flight -= 1
        if tenant_id is not None:
            self.in_flight_by_tenant[tenant_id] -= 1

    def record(self, t: float, uid: str | None, tenant: int | None, endpoint: str, version: int | None, status: int) -> None:
        self.log.append((t, time.monotonic(), uid, tenant, endpoint, version, status))
        self.by_endpoint[endpoint] += 1
        self.by_status[status] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_endpoint.values()),
            "by_endpoint": dict(self.by_endpoint),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "refreshes": self.refreshes,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_by_tenant": {str(k): v for k, v in self.max_in_flight_by_tenant.items()},
            "in_flight": self.in_flight,
            "in_flight_by_tenant": {str(k): v for k, v in self.in_flight_by_tenant.items() if v},
            "now": time.monotonic(),
        }

    def calls(self, uid: str | None = None, since: float | None = None, endpoint: str | None = None) -> list[dict[str, Any]]:
        keys = ("t", "end", "uid", "tenant_id", "endpoint", "token_version", "status")
        return [
            dict(zip(keys, entry))
            for entry in self.log
            if (uid is None or entry[2] == uid)
            and (since is None or entry[0] >= since)
            and (endpoint is None or entry[4] == endpoint)
        ]

    # -- accounts -----------------------------------------------------------------
    def register(self, spec: Mapping[str, Any]) -> Account:
        """Add or replace one account from an admin payload."""
        uid, tenant_id, status = spec["uid"], spec["tenant_id"], spec.get("status", "alive")
        if not isinstance(uid, str) or not uid or isinstance(tenant_id, bool) or not isinstance(tenant_id, int):
            raise ValueError("uid must be a non-empty string and tenant_id an integer")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        version = int(spec.get("token_version", 1))
        account = Account(
            uid=uid,
            tenant_id=tenant_id,
            status=status,
            nickname=str(spec.get("nickname") or uid),
            avatar_url=spec.get("avatar_url"),
            access_token=str(spec.get("access_token") or make_token("at", self.token_seed, uid, version)),
            refresh_token=str(spec.get("refresh_token") or make_token("rt", self.token_seed, uid, version)),
            token_version=version,
            expires_at=time.monotonic() + float(spec.get("expires_in", self.knobs.token_lifetime_s)),
        )
        self.accounts[uid] = account
        self.by_access[account.access_token] = (uid, version)
        self.by_refresh[account.refresh_token] = uid
        return account

    def seed(self, tenants: Mapping[str, int], *, banned_fraction: float, restricted_fraction: float, seed: int) -> int:
        """Create ``u<tenant>-<nnnnnn>`` accounts; statuses and tokens follow from ``seed``."""
        self.token_seed = seed
        self.rng.seed(seed)
        created = 0
        for tenant, count in tenants.items():
            tenant_id = int(tenant)
            for i in range(1, int(count) + 1):
                uid = f"u{tenant_id}-{i:06d}"
                u = _unit(seed, uid)
                status = "banned" if u < banned_fraction else "restricted" if u < banned_fraction + restricted_fraction else "alive"
                self.register(
                    {
                        "uid": uid,
                        "tenant_id": tenant_id,
                        "status": status,
                        "nickname": f"nick{tenant_id}_{i}",
                        "avatar_url": f"https://img.example.com/{uid}.png" if i % 2 else None,
                    }
                )
                created += 1
        return created

    def rotate(self, account: Account) -> None:
        """Refresh: new access and refresh tokens; the old ones stop working."""
        account.token_version += 1
        account.access_token = make_token("at", self.token_seed, account.uid, account.token_version)
        account.refresh_token = make_token("rt", self.token_seed, account.uid, account.token_version)
        account.expires_at = time.monotonic() + self.knobs.token_lifetime_s
        self.by_access[account.access_token] = (account.uid, account.token_version)
        self.by_refresh[account.refresh_token] = account.uid
        self.refreshes += 1

    def expire(self, uids: Iterable[str] | None = None, tenant_id: int | None = None) -> int:
        targets = [self.accounts[u] for u in (uids or ()) if u in self.accounts]
        if tenant_id is not None:
            targets += [a for a in self.accounts.values() if a.tenant_id == tenant_id]
        for account in targets:
            account.expires_at = 0.0
        return len(targets)

    # -- faults -------------------------------------------------------------------
    def pick_fault(self, uid: str | None, endpoint: str) -> str | None:
        """Scripted fault first, then the fixed failing uids, then the random knobs."""
        if uid is not None:
            script = self.scripts.get(uid)
            if script:
                return script.popleft()
            if uid in self.knobs.fail_uids:
                return "500"
        k, rng = self.knobs, self.rng
        if k.error_rate_5xx and rng.random() < k.error_rate_5xx:
            return rng.choice(("500", "502", "503"))
        if k.rate_429 and rng.random() < k.rate_429:
            return "429"
        if k.timeout_rate and rng.random() < k.timeout_rate:
            return "hang"
        if k.reset_rate and rng.random() < k.reset_rate:
            return "reset"
        if k.garbage_rate and rng.random() < k.garbage_rate:
            return "garbage"
        if k.big_body_bytes and k.big_body_rate and rng.random() < k.big_body_rate:
            return "big"
        return None


class AccountPlatformApp:
    """The raw ASGI app: ``/v1/...`` is the platform, ``/_sim/...`` the admin side."""

    def __init__(self, state: PlatformState | None = None) -> None:
        self.state = state or PlatformState()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/_sim/"):
            await self._admin(scope, receive, send)
        else:
            await self._api(scope, receive, send)

    # -- platform -----------------------------------------------------------------
    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        t0 = time.monotonic()
        endpoint = f"{scope['method']} {scope['path']}"
        body = await read_body(receive) if scope["method"] == "POST" else b""
        payload = _parse(body)
        account: Account | None = None
        version: int | None = None
        token_ok = False
        if endpoint == REFRESH:
            token = payload.get("refresh_token") if isinstance(payload, dict) else None
            uid = state.by_refresh.get(token) if isinstance(token, str) else None
            account = state.accounts.get(uid) if uid else None
            version = account.token_version if account else None
            token_ok = account is not None and account.refresh_token == token
        else:
            token = _bearer(scope)
            entry = state.by_access.get(token)
            if entry is not None:
                account = state.accounts.get(entry[0])
                version = entry[1]
                token_ok = account is not None and account.access_token == token
        uid = account.uid if account else None
        tenant = account.tenant_id if account else None
        state.enter(tenant)
        left, status = False, DROPPED
        try:
            knobs = state.knobs
            delay = knobs.latency_ms + (state.rng.random() * knobs.jitter_ms if knobs.jitter_ms else 0.0)
            if delay:  # the answer leaves no earlier than `delay` after the request arrived
                await sleep_until(t0 + delay / 1000)
            fault = state.pick_fault(uid, endpoint)
            if fault is not None:
                status = await self._fault(fault, send)
            else:
                status, reply = self._handle(endpoint, account, token_ok, payload, t0)
                # Out of flight once the answer is ready: sending may yield (a full write buffer on
                # a busy host) while the client, whose slot ends when it reads the answer, already
                # sent its next call; counting until then counted that slot twice.
                state.leave(tenant)
                left = True
                await send_json(send, status, reply)
        finally:
            if not left:
                state.leave(tenant)
            state.record(t0, uid, tenant, endpoint, version, status)

    def _handle(
        self, endpoint: str, account: Account | None, token_ok: bool, payload: Any, now: float
    ) -> tuple[int, dict[str, Any]]:
        if endpoint not in ENDPOINTS:
            return 404, _error("not_found", "no such endpoint")
        if payload is _INVALID:
            return 400, _error("invalid_json", "the body is not a JSON object")
        if endpoint == REFRESH:  # checked again now: a concurrent refresh may have spent the token meanwhile
            spent = account is None or payload.get("refresh_token") != account.refresh_token
            return self._refresh(None if spent or not token_ok else account)
        if account is None or not token_ok:
            return 401, _error("invalid_token", "the access token is unknown or was rotated")
        if now >= account.expires_at:
            return 401, _error("token_expired", "the access token has expired; refresh it")
        if endpoint == ME:
            return 200, account.public()
        if account.status == "banned":
            return 403, _error("account_banned", "this account is banned")
        if endpoint == NICKNAME:
            nickname = payload.get("nickname")
            if not isinstance(nickname, str) or not 1 <= len(nickname.strip()) <= NICKNAME_MAX or not nickname.isprintable():
                return 422, _error("invalid_nickname", f"a nickname is 1-{NICKNAME_MAX} printable characters")
            account.nickname = nickname
            return 200, {"uid": account.uid, "nickname": nickname}
        if endpoint == AVATAR:
            url = payload.get("avatar_url")
            if not isinstance(url, str) or not url.startswith(("https://", "http://")) or len(url) > AVATAR_URL_MAX:
                return 422, _error("invalid_avatar_url", f"an avatar url is an http(s) URL of at most {AVATAR_URL_MAX} characters")
            account.avatar_url = url
            return 200, {"uid": account.uid, "avatar_url": url}
        if endpoint == BIO:
            bio = payload.get("bio")
            if not isinstance(bio, str) or len(bio) > BIO_MAX or not all(c.isprintable() or c == "\n" for c in bio):
                return 422, _error("invalid_bio", f"a bio is at most {BIO_MAX} printable characters (newlines allowed)")
            account.bio = bio
            return 200, {"uid": account.uid, "bio": bio}
        return self._friend(account, payload.get("friend_uid"))

    def _friend(self, account: Account, friend_uid: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(friend_uid, str) or friend_uid == account.uid:
            return 422, _error("invalid_friend", "friend_uid must be another account's uid")
        friend = self.state.accounts.get(friend_uid)
        if friend is None:
            return 404, _error("unknown_friend", "no account has that uid")
        if friend_uid in account.friends:
            return 200, {"status": "already_friends"}
        if friend_uid in account.requested:
            return 200, {"status": "pending"}
        if account.uid in friend.requested:  # a mutual request makes them friends
            friend.requested.discard(account.uid)
            account.friends.add(friend_uid)
            friend.friends.add(account.uid)
        else:
            account.requested.add(friend_uid)
        return 200, {"status": "sent"}

    def _refresh(self, account: Account | None) -> tuple[int, dict[str, Any]]:
        if account is None or account.uid in self.state.knobs.refresh_fail_uids:
            return 400, _error("invalid_grant", "the refresh token is unknown or was already used")
        self.state.rotate(account)
        return 200, {
            "access_token": account.access_token,
            "refresh_token": account.refresh_token,
            "expires_in": int(self.state.knobs.token_lifetime_s),
        }

    async def _fault(self, fault: str, send: Send) -> int:
        """Send the faulty response; returns the status for the call log."""
        knobs = self.state.knobs
        if fault == "429":
            value = knobs.retry_after_s
            header = str(int(value)) if float(value).is_integer() else f"{value:g}"
            await send_json(send, 429, _error("rate_limited", "too many requests"), [(b"retry-after", header.encode())])
            return 429
        if fault.isdigit():
            await send_json(send, int(fault), _error("unavailable", "temporary failure, try again"))
            return int(fault)
        if fault == "hang":
            await asyncio.sleep(knobs.hang_s)
            await send_json(send, 504, _error("timeout", "upstream timed out"))
            return 504
        if fault == "trickle":
            await self._trickle(send, knobs.trickle_s, knobs.trickle_interval_s)
            return 200
        if fault == "wrong":
            await send_json(send, 200, {"uid": 12345, "status": "zombie", "nickname": None, "avatar_url": 7})
            return 200
        if fault == "reset":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")]})
            await send({"type": "http.response.body", "body": b'{"uid": "', "more_body": True})
            raise AbruptClose()
        if fault == "garbage":
            if self.state.rng.random() < 0.5:
                await send_body(send, 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", content_type=b"text/html")
            else:
                await send_body(send, 200, b'{"uid": "u7-0000', content_type=b"application/json")
            return 200
        await self._big(send, knobs.big_body_bytes)
        return 200

    @staticmethod
    async def _trickle(send: Send, duration: float, interval: float) -> None:
        """Headers at once, then the body in small pieces every ``interval`` for ``duration``
        (each read is quick, the whole is not); the body is a valid answer in the end."""
        body = b'{"uid": "trickle", "status": "alive", "nickname": "slow", "avatar_url": null}'
        pieces = max(1, int(duration / max(interval, 0.001)))
        size = -(-len(body) // pieces)
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for n, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": n < len(parts) - 1})
            if n < len(parts) - 1:
                await asyncio.sleep(interval)

    @staticmethod
    async def _big(send: Send, size: int) -> None:
        head, tail = b'{"padding":"', b'"}'
        filler = max(0, size - len(head) - len(tail))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(head) + filler + len(tail)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": head, "more_body": True})
        chunk = b"x" * 65536
        while filler > 0:
            piece = chunk if filler >= len(chunk) else chunk[:filler]
            filler -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": tail})

    # -- admin --------------------------------------------------------------------
    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        route = f"{scope['method']} {scope['path']}"
        body = await read_body(receive, limit=64 << 20) if scope["method"] == "POST" else b""
        payload = _parse(body)
        if payload is _INVALID:
            await send_json(send, 400, _error("invalid_json", "the body is not JSON"))
            return
        params = query_params(scope)
        now = time.monotonic()
        try:
            if route == "GET /_sim/health":
                reply: Any = {"ok": True, "accounts": len(state.accounts)}
            elif route == "POST /_sim/accounts":
                specs = payload if isinstance(payload, list) else payload.get("accounts", [])
                reply = {"registered": len([state.register(spec) for spec in specs])}
            elif route == "GET /_sim/accounts":
                tenant = params.get("tenant_id")
                reply = [a.admin(now) for a in state.accounts.values() if tenant is None or str(a.tenant_id) == tenant]
            elif route == "POST /_sim/seed":
                reply = {
                    "created": state.seed(
                        payload.get("tenants", {}),
                        banned_fraction=float(payload.get("banned_fraction", 0.0)),
                        restricted_fraction=float(payload.get("restricted_fraction", 0.0)),
                        seed=int(payload.get("seed", 1)),
                    )
                }
            elif route == "POST /_sim/config":
                state.knobs.update(payload)
                if "rng_seed" in payload:
                    state.rng.seed(state.knobs.rng_seed)
                reply = state.knobs.as_dict()
            elif route == "GET /_sim/config":
                reply = state.knobs.as_dict()
            elif route == "POST /_sim/script":
                faults = [str(f) for f in payload.get("faults", [])]
                unknown = [f for f in faults if f not in FAULTS]
                if unknown:
                    raise ValueError(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
                state.scripts[str(payload["uid"])] = deque(faults)
                reply = {"uid": payload["uid"], "queued": len(faults)}
            elif route == "GET /_sim/calls":
                since = params.get("since")
                reply = state.calls(params.get("uid"), float(since) if since else None, params.get("endpoint"))
            elif route == "GET /_sim/stats":
                reply = state.stats()
            elif route == "POST /_sim/reset":
                state.reset()
                reply = {"ok": True}
            elif route == "POST /_sim/expire":
                tenant = payload.get("tenant_id")
                reply = {"expired": state.expire(payload.get("uids"), int(tenant) if tenant is not None else None)}
            else:
                await send_json(send, 404, _error("not_found", f"no admin route {route}"))
                return
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            await send_json(send, 400, _error("bad_request", str(exc)))
            return
        await send_json(send, 200, reply)


_INVALID: Any = object()


def _parse(body: bytes | None) -> Any:
    """JSON body; ``{}`` when empty; ``_INVALID`` when unreadable or too large."""
    if body is None:
        return _INVALID
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except ValueError:
        return _INVALID
    return payload if isinstance(payload, (dict, list)) else _INVALID


def _bearer(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return ""


class PlatformSimulator:
    """The simulator on a free loopback port, driven through its admin API.

    ``subprocess=False`` (default) serves from a daemon thread of this process;
    ``subprocess=True`` runs ``python -m simulators.account_platform`` so the server
    gets its own CPU (benchmarks). Knobs given here are applied at start.
    """

    def __init__(
        self, *, subprocess: bool = False, host: str = "127.0.0.1", port: int = 0, log_max: int = 1_000_000, **knobs: Any
    ) -> None:
        self._knobs = knobs
        self._runner: ServerThread | ServerProcess
        if subprocess:
            self._runner = ServerProcess("simulators.account_platform", ["--host", host, "--log-max", str(log_max)])
            self.state: PlatformState | None = None
        else:
            self.state = PlatformState(log_max=log_max)
            self._runner = ServerThread(AccountPlatformApp(self.state), host, port)
        self._admin: httpx.Client | None = None
        self.url = ""

    def start(self) -> PlatformSimulator:
        self.url = self._runner.start()
        try:
            self._admin = httpx.Client(base_url=self.url, timeout=60, trust_env=False)
            if self._knobs:
                self.configure(**self._knobs)
        except BaseException:
            self.stop()  # __exit__ will not run when __enter__ fails: never leave a child behind
            raise
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._runner.stop()

    def __enter__(self) -> PlatformSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._admin is not None, "start the simulator first"
        response = self._admin.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def seed(
        self,
        tenants: Mapping[int | str, int],
        *,
        banned_fraction: float = 0.0,
        restricted_fraction: float = 0.0,
        seed: int = 1,
    ) -> int:
        """Deterministic accounts ``u<tenant>-<nnnnnn>``; returns how many were created."""
        body = {
            "tenants": {str(k): v for k, v in tenants.items()},
            "banned_fraction": banned_fraction,
            "restricted_fraction": restricted_fraction,
            "seed": seed,
        }
        return int(self._call("POST", "/_sim/seed", json=body)["created"])

    def register(self, accounts: Sequence[Mapping[str, Any]]) -> int:
        return int(self._call("POST", "/_sim/accounts", json=list(accounts))["registered"])

    def accounts(self, tenant_id: int | None = None) -> list[dict[str, Any]]:
        """Accounts with their current tokens (to seed a database)."""
        params = {} if tenant_id is None else {"tenant_id": tenant_id}
        return list(self._call("GET", "/_sim/accounts", params=params))

    def configure(self, **knobs: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_sim/config", json=knobs))

    def config(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/config"))

    def script(self, uid: str, *faults: str | int) -> None:
        """Exact faults for the next calls of ``uid`` (``429``, ``500``, ``"reset"``, ...)."""
        self._call("POST", "/_sim/script", json={"uid": uid, "faults": [str(f) for f in faults]})

    def calls(self, uid: str | None = None, since: float | None = None, endpoint: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"uid": uid, "since": since, "endpoint": endpoint}.items() if v is not None}
        return list(self._call("GET", "/_sim/calls", params=params))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sim/stats"))

    def reset(self) -> None:
        self._call("POST", "/_sim/reset")

    def expire(self, uids: Iterable[str] | None = None, *, tenant_id: int | None = None) -> int:
        body: dict[str, Any] = {"uids": list(uids or [])}
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        return int(self._call("POST", "/_sim/expire", json=body)["expired"])


def _parse_tenants(text: str) -> dict[str, int]:
    """``"7:300,8:300"`` -> ``{"7": 300, "8": 300}``."""
    pairs = (item.split(":") for item in text.split(",") if item.strip())
    return {tenant.strip(): int(count) for tenant, count in pairs}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulators.account_platform", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument("--seed-tenants", default="", help="e.g. 7:300,8:300")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--banned-fraction", type=float, default=0.0)
    parser.add_argument("--restricted-fraction", type=float, default=0.0)
    parser.add_argument(
        "--accounts-file", help="also know the accounts of this CSV/JSON file (as `python -m db import-accounts` reads it)"
    )
    parser.add_argument("--log-max", type=int, default=1_000_000, help="call-log entries kept")
    parser.add_argument("--log-level", default="warning")
    for f in fields(Knobs):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "list[str]":
            parser.add_argument(flag, default="", help="comma-separated uids")
        else:
            parser.add_argument(flag, type=int if f.type == "int" else float, default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    state = PlatformState(log_max=args.log_max)
    changes: dict[str, Any] = {}
    for f in fields(Knobs):
        value = getattr(args, f.name)
        if f.type == "list[str]":
            if value:
                changes[f.name] = [u.strip() for u in value.split(",") if u.strip()]
        elif value is not None:
            changes[f.name] = value
    state.knobs.update(changes)
    state.rng.seed(state.knobs.rng_seed)
    if args.seed_tenants:
        state.seed(
            _parse_tenants(args.seed_tenants),
            banned_fraction=args.banned_fraction,
            restricted_fraction=args.restricted_fraction,
            seed=args.seed,
        )
    if args.accounts_file:
        from batchcore.account_file import read_accounts_file

        for row in read_accounts_file(args.accounts_file):
            state.register({
                "uid": row["platform_uid"], "tenant_id": row["tenant_id"], "access_token": row["access_token"],
                "refresh_token": row["refresh_token"], "nickname": row.get("nickname"),
                "avatar_url": row.get("avatar_url"), "status": row.get("status") if row.get("status") in STATUSES else "alive",
            })
    sock = bind_socket(args.host, args.port)
    server = make_server(AccountPlatformApp(state), log_level=args.log_level)
    announce(sock)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
