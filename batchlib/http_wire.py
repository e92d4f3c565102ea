"""The HTTP seam of both outside clients: one request as a reply or a failure reason.

``PlatformClient`` and ``KuboClient`` take a ``Wire`` (``wire=``); production and every test
against a simulator use ``AiohttpWire``, pure unit tests a scripted fake (tests/support/wire.py).
Nothing here raises for what the network or the server does:

- ``send`` returns a ``Reply`` (body ``None`` when larger than ``max_body_bytes``) or a short,
  token-free reason such as ``"timeout (ReadTimeout)"``;
- ``open`` returns a ``Stream`` (status, headers, the body as chunks; for pin/ls) or a reason; a
  body that breaks while streamed raises ``StreamBroken(reason)``.

Retries, refresh and error classes live in the clients; the wire only moves bytes, with
these limits (``Limits``):

- ``connect_timeout``: to open a connection; waiting for a free pooled connection is not
  the server's fault and has no limit;
- ``read_timeout``: no byte for this long (headers or body) -> ``timeout (ReadTimeout)``;
- ``body_timeout``: the body not complete this long after the headers (a trickling server
  resets a per-read timeout with every byte) -> ``timeout (BodyTimeout)``; ``send`` only;
- ``max_body_bytes``: a declared or actual larger body stops the read (``Reply.body is None``).

Why aiohttp and not httpx (which the card names): CPU per request bounds a batch, since one
event loop makes every call, and aiohttp costs 0.16 ms of client CPU per request against
1.1 ms for httpx on pools of 2 connections and 3.8 ms on one pool of 50 (platform ``GET
/v1/me``; Kubo ``files/stat`` alike: 0.27 against 1.1 and 4.2 ms), measured by
``bench/http_libs.py`` (docs/benchmarks.md). httpcore's pool is quadratic in requests in
flight x connections; aiohttp's is not, so the sharded httpx transport the Kubo client needed
is gone too.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

import aiohttp
import certifi

from batchlib.backoff import RetryPolicy

if TYPE_CHECKING:
    from batchcore.settings import Settings

__all__ = ["AiohttpWire", "Limits", "Reply", "Stream", "StreamBroken", "Wire", "WireClient", "http_options"]


@dataclass(slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes | None  # None: larger than max_body_bytes


class StreamBroken(Exception):
    """A streamed body ended before its clean end; ``reason`` is short and token-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stream(Protocol):
    """An open response whose body is read as it arrives; ``aclose`` frees its connection."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises ``StreamBroken`` if it breaks."""
        ...

    async def aclose(self) -> None: ...


class Wire(Protocol):
    async def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Reply | str: ...

    async def open(self, method: str, path: str, headers: dict[str, str]) -> Stream | str: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    connect_timeout: float = 5
    read_timeout: float = 10
    body_timeout: float = 30
    max_body_bytes: int = 1_000_000
    max_connections: int = 200
    proxy: str | None = None  # an HTTP proxy for every request (never read from the environment)


class AiohttpWire:
    """Requests through one ``aiohttp.ClientSession``, created in the loop of the first request."""

    def __init__(self, base_url: str, limits: Limits, headers: Mapping[str, str] | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._limits = limits
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        limits = self._limits
        connector = aiohttp.TCPConnector(limit=limits.max_connections, limit_per_host=0, ssl=ssl_context())
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=self._headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
            # No trust_env: with it aiohttp reads the proxy variables and ~/.netrc on every
            # request (+0.45 ms of CPU each, measured). A proxy is a setting instead.
            trust_env=False,
            proxy=limits.proxy,
        )
        return self._session

    @property
    def idle(self) -> bool:
        """No connection is lent out (white-box check for tests: resets and abandoned bodies release theirs)."""
        session = self._session
        return session is None or session.closed or not session.connector._acquired  # type: ignore[union-attr]  # noqa: SLF001

    async def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Reply | str:
        session = self._session or self._open()
        cap = self._limits.max_body_bytes
        try:
            async with session.request(
                method, self._base + path, headers=headers, data=content, allow_redirects=False
            ) as response:
                declared = response.content_length
                if declared is not None and declared > cap:
                    return Reply(response.status, response.headers, None)
                if response.content.is_eof():  # the whole body came with the headers: no waiting
                    body: bytes | None = await response.content.read()
                    body = body if len(body) <= cap else None
                else:
                    body = await _read_capped(response.content.iter_any(), cap, self._limits.body_timeout)
                return Reply(response.status, response.headers, body)
        except TimeoutError as exc:  # asyncio.timeout: the body trickled in for too long
            return _reason(exc) if isinstance(exc, aiohttp.ClientError) else "timeout (BodyTimeout)"
        except (aiohttp.ClientError, OSError) as exc:
            return _reason(exc)

    async def open(self, method: str, path: str, headers: dict[str, str]) -> Stream | str:
        session = self._session or self._open()
        try:
            response = await session.request(method, self._base + path, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            return _reason(exc)
        return _AiohttpStream(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise StreamBroken(_reason(exc)) from None

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


def _reason(exc: BaseException) -> str:
    """A short reason for a transport failure. The exception is not kept: aiohttp's
    ``request_info`` holds the request headers (the bearer token)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "timeout (ConnectTimeout)"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout (ReadTimeout)"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection error (truncated or undecodable body)"
    return f"connection error ({type(exc).__name__})"


async def _read_capped(chunks: AsyncIterator[bytes], cap: int, timeout: float) -> bytes | None:
    """The whole body, or None past ``cap`` bytes; TimeoutError if not complete within ``timeout``.

    Returning early leaves the rest unread: the response's context manager then closes the
    connection instead of returning it to the pool.
    """
    buffer = bytearray()
    async with asyncio.timeout(timeout):
        async for chunk in chunks:
            buffer += chunk
            if len(buffer) > cap:
                return None
    return bytes(buffer)


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One verifying context (certifi's CA bundle) for every session: building one costs ~20 ms."""
    return ssl.create_default_context(cafile=certifi.where())


def http_options(settings: Settings) -> dict[str, Any]:
    """The ``BATCH_HTTP_*`` settings both clients take: timeouts, retry policy, body cap."""
    return {
        "connect_timeout": settings.http_connect_timeout_s,
        "read_timeout": settings.http_read_timeout_s,
        "body_timeout": settings.http_body_timeout_s,
        "retry": RetryPolicy.http(settings),
        "max_body_bytes": settings.http_max_body_bytes,
    }


class WireClient:
    """A client that owns its ``Wire``: ``async with client:`` closes it."""

    _wire: Wire

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._wire.aclose()
