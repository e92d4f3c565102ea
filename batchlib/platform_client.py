"""Async client of the account platform; the contract is docs/platform-api.md.

What each answer leads to::

    2xx with a JSON object of the expected shape -> returned
    2xx unreadable (HTML, truncated JSON)        -> retried once, then BadPlatformResponse
    2xx JSON of the wrong shape                  -> BadPlatformResponse (not retried)
    body over max_body_bytes                     -> BadPlatformResponse (streamed, stops at the cap)
    401                                          -> one single-flight refresh per account, then one retry;
                                                    tokens stored by someone else meanwhile are used
                                                    instead of refreshing; refresh refused -> TokenRefreshFailed
    429                                          -> wait Retry-After (capped), retry; budget spent -> RateLimited
    5xx, timeout, connection error/reset         -> full-jitter backoff, retry; budget spent -> PlatformUnavailable
    (the waits and the budget: the ``RetryPolicy`` given, ``batchlib.backoff``)
    (a timeout: no byte for ``read_timeout``, or the body not complete ``body_timeout`` after
    the headers: a trickling server resets a per-read timeout with every byte)
    other 4xx                                    -> PlatformRejected(<error code>), not retried

Request budget of one call: 1 + ``retry.max_retries`` sends (shared by the call and a refresh it
leads), plus at most one refresh request and one re-send after it, plus at most ``ADOPT_MAX``
re-sends with a pair someone else (the admin system, another worker) stored meanwhile:
never more than ``max_requests_per_call``. ``attempts`` counts every request sent.

Tokens travel only in the ``Authorization`` header and the refresh body; they never
appear in URLs, log records or exception text: the wire (``batchlib.http_wire``) turns
transport failures into short reasons and keeps no exception, whose request object
would hold the headers.

Requests go over the injected ``Wire``; by default ``AiohttpWire``, the one production and the
simulator tests use (why aiohttp: ``batchlib/http_wire.py``, 0.16 against 1.1 ms of CPU per
request with httpx). Unit tests inject a scripted fake wire.

One client belongs to the event loop it is first used in (its connection pool and
per-account locks are bound to it): create one per loop, use it as ``async with``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from batchcore.errors import (
    BadPlatformResponse,
    PlatformRejected,
    PlatformUnavailable,
    RateLimited,
    TokenRefreshFailed,
)
from batchlib.backoff import RetryPolicy, parse_retry_after
from batchlib.http_wire import AiohttpWire, Limits, Reply, Wire, WireClient, http_options

if TYPE_CHECKING:
    from batchcore.settings import Settings

__all__ = [
    "AccountState",
    "AccountStatus",
    "Credentials",
    "FriendStatus",
    "InMemoryTokenStore",
    "PlatformClient",
    "TokenStore",
]

logger = logging.getLogger(__name__)

AccountStatus = Literal["alive", "banned", "restricted"]
FriendStatus = Literal["sent", "already_friends", "pending"]
ACCOUNT_STATUSES = frozenset({"alive", "banned", "restricted"})
FRIEND_STATUSES = frozenset({"sent", "already_friends", "pending"})
REFRESH_PATH = "/v1/oauth/refresh"
DEFAULT_HEADERS = {"Accept": "application/json", "User-Agent": "batchlib-platform-client"}
RELOAD_PAUSES = (0.0, 0.2, 0.8)  # re-reads of the stored pair after a refused refresh or refreshed token
ADOPT_MAX = 2  # re-sends of one call with a pair someone else stored
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """An account's tokens; ``version`` increases with every stored refresh. Repr hides the tokens."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    version: int = 0


class TokenStore(Protocol):
    """Where an account's tokens live (the database in production)."""

    async def load(self, account_id: int) -> Credentials: ...

    async def reload(self, account_id: int) -> Credentials:
        """Read the stored tokens again (someone else may have refreshed them); return them."""
        ...

    async def save(
        self, account_id: int, old: Credentials, access_token: str, refresh_token: str, expires_in: int
    ) -> Credentials:
        """Store the pair obtained by refreshing ``old`` unless the stored pair moved on; return what is stored now."""
        ...


class InMemoryTokenStore:
    """A dict-backed ``TokenStore`` for tests and benchmarks."""

    def __init__(self) -> None:
        self._tokens: dict[int, Credentials] = {}
        self.saves = 0

    def put(self, account_id: int, access_token: str, refresh_token: str, version: int = 1) -> Credentials:
        creds = self._tokens[account_id] = Credentials(access_token, refresh_token, version)
        return creds

    def get(self, account_id: int) -> Credentials:
        return self._tokens[account_id]

    async def load(self, account_id: int) -> Credentials:
        return self._tokens[account_id]

    reload = load

    async def save(
        self, account_id: int, old: Credentials, access_token: str, refresh_token: str, expires_in: int
    ) -> Credentials:
        current = self._tokens[account_id]
        if current.refresh_token == old.refresh_token:
            current = self._tokens[account_id] = Credentials(access_token, refresh_token, current.version + 1)
            self.saves += 1
        return current


@dataclass(frozen=True, slots=True)
class AccountState:
    uid: str
    status: AccountStatus
    nickname: str
    avatar_url: str | None


@dataclass(slots=True)
class _Budget:
    """Retries spent by one logical call (its refresh included)."""

    retries: int = 0
    garbage_retried: bool = False


class PlatformClient(WireClient):
    """One long-lived HTTP client for the platform; methods take our ``account_id``.

    Requests go over ``wire`` (default: an ``AiohttpWire`` with the timeouts, caps, pool size
    and proxy given here). ``retry`` gives the budget and the waits; its ``sleep`` and ``rng``
    are hooks for tests (record the waits, fix the jitter).
    """

    def __init__(
        self,
        base_url: str,
        token_store: TokenStore,
        *,
        connect_timeout: float = 5,
        read_timeout: float = 10,
        body_timeout: float = 30,
        retry: RetryPolicy = RetryPolicy(),
        max_body_bytes: int = 1_000_000,
        wire: Wire | None = None,
        max_connections: int = 200,
        proxy: str | None = None,
    ) -> None:
        self._store = token_store
        self.retry = retry
        self.max_body_bytes = max_body_bytes
        limits = Limits(connect_timeout, read_timeout, body_timeout, max_body_bytes, max_connections, proxy)
        self._wire: Wire = wire or AiohttpWire(base_url, limits, DEFAULT_HEADERS)
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._refused: dict[int, int] = {}  # account_id -> credentials version whose refresh was refused
        self._loop: asyncio.AbstractEventLoop | None = None
        self.attempts = 0  # every HTTP request sent, refreshes included
        self.refreshes = 0  # refresh requests led by this client

    @classmethod
    def from_settings(cls, settings: Settings, token_store: TokenStore, **overrides: Any) -> PlatformClient:
        options: dict[str, Any] = {
            **http_options(settings),
            "proxy": settings.platform_proxy_url.get_secret_value() if settings.platform_proxy_url else None,
        }
        return cls(settings.platform_url, token_store, **{**options, **overrides})

    @property
    def max_requests_per_call(self) -> int:
        """Upper bound of requests one call sends: 1 + max_retries, a refresh and its re-send,
        and up to ``ADOPT_MAX`` re-sends with tokens stored by someone else meanwhile."""
        return self.retry.max_retries + 3 + ADOPT_MAX

    # -- platform operations ------------------------------------------------------
    async def get_me(self, account_id: int) -> AccountState:
        data = await self._call(account_id, "GET", "/v1/me")
        uid, status, nickname, avatar = (data.get(k) for k in ("uid", "status", "nickname", "avatar_url"))
        if not (isinstance(uid, str) and status in ACCOUNT_STATUSES and isinstance(nickname, str)) or not (
            avatar is None or isinstance(avatar, str)
        ):
            raise BadPlatformResponse("unexpected account state from the platform", status_code=200)
        return AccountState(uid, status, nickname, avatar)

    async def change_nickname(self, account_id: int, nickname: str) -> dict[str, str]:
        data = await self._call(account_id, "POST", "/v1/me/nickname", {"nickname": nickname})
        return _strings(data, "uid", "nickname")

    async def change_avatar(self, account_id: int, avatar_url: str) -> dict[str, str]:
        data = await self._call(account_id, "POST", "/v1/me/avatar", {"avatar_url": avatar_url})
        return _strings(data, "uid", "avatar_url")

    async def change_bio(self, account_id: int, bio: str) -> dict[str, str]:
        data = await self._call(account_id, "POST", "/v1/me/bio", {"bio": bio})
        return _strings(data, "uid", "bio")

    async def add_friend(self, account_id: int, friend_uid: str) -> FriendStatus:
        """``sent``, ``pending`` (asked before, e.g. by a retried call) or ``already_friends``."""
        data = await self._call(account_id, "POST", "/v1/me/friends", {"friend_uid": friend_uid})
        status = data.get("status")
        if status not in FRIEND_STATUSES:
            raise BadPlatformResponse("unexpected friend request status from the platform", status_code=200)
        return status  # type: ignore[return-value]

    # -- the call, with refresh ---------------------------------------------------
    async def _call(self, account_id: int, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self._check_loop()
        creds = await self._store.load(account_id)
        budget = _Budget()
        refreshed = False
        adopted = 0
        while True:
            status, data = await self._exchange(method, path, creds.access_token, body, budget)
            if 200 <= status < 300:
                return data
            if status != 401:
                raise PlatformRejected(_rejection(status, data), status_code=status)
            if refreshed:
                # Rotated again by someone else (the admin system refreshes too) since our refresh?
                newer = await self._stored_since(account_id, creds) if adopted < ADOPT_MAX else None
                if newer is None:
                    raise TokenRefreshFailed("the platform refused the token obtained by refresh", status_code=401)
                creds, adopted = newer, adopted + 1
                continue
            creds, refreshed = await self._refresh(account_id, creds, budget)
            if not refreshed:  # a pair someone else stored (it may be expired: then we refresh)
                adopted += 1
                if adopted > ADOPT_MAX:
                    raise TokenRefreshFailed("the stored tokens keep being refused", status_code=401)

    async def _refresh(self, account_id: int, failed: Credentials, budget: _Budget) -> tuple[Credentials, bool]:
        """Single-flight per account: the first caller refreshes, the others reuse its result.

        Returns the pair to use and whether this call obtained it from the platform (False: a
        pair someone else stored since ``failed`` was read).
        """
        lock = self._locks.get(account_id)
        if lock is None:
            lock = self._locks[account_id] = asyncio.Lock()
        async with lock:
            current = await self._store.load(account_id)
            if current.version != failed.version:
                return current, False  # someone refreshed since our call failed
            current = await self._store.reload(account_id)
            if current.version != failed.version:
                return current, False  # stored by someone else (the admin system refreshes too)
            if self._refused.get(account_id) == current.version:
                raise TokenRefreshFailed("refresh token rejected", status_code=400)
            self.refreshes += 1
            logger.debug("refreshing the tokens of account %s", account_id)
            status, data = await self._exchange(
                "POST", REFRESH_PATH, None, {"refresh_token": current.refresh_token}, budget
            )
            if status in (400, 401):
                newer = await self._stored_since(account_id, current)  # rotated by someone else meanwhile?
                if newer is not None:
                    return newer, False
                self._refused[account_id] = current.version
                raise TokenRefreshFailed("refresh token rejected", status_code=status)
            if not 200 <= status < 300:
                raise TokenRefreshFailed(f"refresh refused: {_rejection(status, data)}", status_code=status)
            access, refresh, expires_in = (data.get(k) for k in ("access_token", "refresh_token", "expires_in"))
            if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh) or not (
                isinstance(expires_in, int) and not isinstance(expires_in, bool)
            ):
                raise BadPlatformResponse("unexpected refresh response from the platform", status_code=status)
            return await self._store.save(account_id, current, access, refresh, expires_in), True

    async def _stored_since(self, account_id: int, refused: Credentials) -> Credentials | None:
        """A pair stored after ``refused`` by someone else, or None. The admin system may be
        storing the pair it just obtained (between the platform's answer and its UPDATE), so
        the store is read a few times over ``sum(RELOAD_PAUSES)`` seconds."""
        for pause in RELOAD_PAUSES:
            await self.retry.sleep(pause)
            newer = await self._store.reload(account_id)
            if newer.version != refused.version:
                return newer
        return None

    # -- one request with transient retries ---------------------------------------
    async def _exchange(
        self, method: str, path: str, token: str | None, body: dict[str, Any] | None, budget: _Budget
    ) -> tuple[int, dict[str, Any]]:
        """Send until a 2xx with a JSON object or a 4xx other than 429; returns (status, JSON)."""
        while True:
            reply = await self._send(method, path, token, body)
            retry_after: float | None = None
            if isinstance(reply, str):
                reason, error = reply, PlatformUnavailable
            elif reply.body is None:
                raise BadPlatformResponse(
                    f"response body larger than {self.max_body_bytes} bytes", status_code=reply.status
                )
            elif reply.status == 429:
                reason, error = "rate limited (HTTP 429)", RateLimited
                retry_after = parse_retry_after(reply.headers.get("retry-after"))
            elif reply.status >= 500:
                reason, error = f"platform error (HTTP {reply.status})", PlatformUnavailable
            else:
                data = _json_object(reply.body)
                if not 200 <= reply.status < 300:
                    return reply.status, data or {}
                if data is not None:
                    return reply.status, data
                if budget.garbage_retried:
                    raise BadPlatformResponse("unreadable response body (not a JSON object)", status_code=reply.status)
                budget.garbage_retried = True
                reason, error = "unreadable response body", BadPlatformResponse
            if budget.retries >= self.retry.max_retries:
                raise error(f"{reason}; gave up after {budget.retries + 1} attempts")
            delay = self.retry.delay(budget.retries, retry_after)
            budget.retries += 1
            logger.debug("%s %s: %s; retry %d in %.2fs", method, path, reason, budget.retries, delay)
            await self.retry.sleep(delay)

    async def _send(self, method: str, path: str, token: str | None, body: dict[str, Any] | None) -> Reply | str:
        """One HTTP request; the reply (body None when over the cap) or a transport failure reason."""
        self.attempts += 1
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        return await self._wire.send(method, path, headers, content)

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this PlatformClient belongs to another event loop; create one client per loop")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _rejection(status: int, data: Mapping[str, Any]) -> str:
    """A short, token-free reason: the body's error code if it looks like one, else the status."""
    code = data.get("error")
    if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
        return f"{code} (HTTP {status})"
    return f"rejected (HTTP {status})"


def _strings(data: Mapping[str, Any], *keys: str) -> dict[str, str]:
    values = {k: data.get(k) for k in keys}
    if not all(isinstance(v, str) for v in values.values()):
        raise BadPlatformResponse("unexpected response shape from the platform", status_code=200)
    return values  # type: ignore[return-value]
