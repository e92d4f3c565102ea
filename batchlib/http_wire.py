"""One HTTP request to the platform, as a reply or a failure reason: the I/O under PlatformClient.

``Wire.send`` never raises for what the network or the server does; it returns either a
``Reply`` (body ``None`` when larger than ``max_body_bytes``) or a short, token-free reason
such as ``"timeout (ReadTimeout)"``. Retries, refresh and error classes live in
``batchlib.platform_client``; this module only moves bytes, with these limits:

- ``connect_timeout``: to open a connection; waiting for a free pooled connection is not
  the platform's fault and has no limit;
- ``read_timeout``: no byte for this long (headers or body) -> ``timeout (ReadTimeout)``;
- ``body_timeout``: the body not complete this long after the headers (a trickling server
  resets a per-read timeout with every byte) -> ``timeout (BodyTimeout)``;
- ``max_body_bytes``: a declared or actual larger body stops the read (``Reply.body is None``).

Two implementations:

``AiohttpWire`` (production): aiohttp's connection pool and C HTTP parser. It costs
~0.15 ms of CPU per request here against ~0.7 ms for ``httpx.AsyncClient`` (docs/benchmarks.md),
and the platform client's event loop is what bounds a batch.

``HttpxWire``: the same contract over any ``httpx`` transport; unit tests pass an
``httpx.MockTransport`` to script answers without a server.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx

__all__ = ["AiohttpWire", "HttpxWire", "Reply", "Wire"]

DEFAULT_HEADERS = {"Accept": "application/json", "User-Agent": "batchlib-platform-client"}


@dataclass(slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes | None  # None: larger than max_body_bytes


class Wire(Protocol):
    async def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Reply | str: ...

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

    def __init__(self, base_url: str, limits: Limits) -> None:
        self._base = base_url.rstrip("/")
        self._limits = limits
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
            headers=DEFAULT_HEADERS,
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
        url = self._base + path
        cap = self._limits.max_body_bytes
        try:
            async with session.request(method, url, headers=headers, data=content, allow_redirects=False) as response:
                declared = response.content_length
                if declared is not None and declared > cap:
                    return Reply(response.status, response.headers, None)
                if response.content.is_eof():  # the whole body came with the headers: no waiting
                    body: bytes | None = await response.content.read()
                    body = body if len(body) <= cap else None
                else:
                    body = await _read_capped(response.content.iter_any(), cap, self._limits.body_timeout)
                return Reply(response.status, response.headers, body)
        except aiohttp.ConnectionTimeoutError:
            return "timeout (ConnectTimeout)"
        except aiohttp.ServerTimeoutError:
            return "timeout (ReadTimeout)"
        except TimeoutError:  # asyncio.timeout: the body trickled in for too long
            return "timeout (BodyTimeout)"
        except aiohttp.ClientPayloadError:
            return "connection error (truncated or undecodable body)"
        except (aiohttp.ClientError, OSError) as exc:
            # The exception is not chained or kept: aiohttp's request_info holds the headers.
            return f"connection error ({type(exc).__name__})"

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxWire:
    """The same contract over an ``httpx`` transport (tests: ``httpx.MockTransport``)."""

    def __init__(self, base_url: str, limits: Limits, transport: httpx.AsyncBaseTransport) -> None:
        self._limits = limits
        self._http = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout, pool=None),
            headers=DEFAULT_HEADERS,
        )

    async def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Reply | str:
        cap = self._limits.max_body_bytes
        try:
            async with self._http.stream(method, path, headers=headers, content=content) as response:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    return Reply(response.status_code, response.headers, None)
                body = await _read_capped(response.aiter_bytes(), cap, self._limits.body_timeout)
                return Reply(response.status_code, response.headers, body)
        except httpx.TimeoutException as exc:
            return f"timeout ({type(exc).__name__})"
        except TimeoutError:
            return "timeout (BodyTimeout)"
        except httpx.DecodingError:
            return "undecodable response body"
        except httpx.TransportError as exc:
            return f"connection error ({type(exc).__name__})"

    async def aclose(self) -> None:
        await self._http.aclose()


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
    """One verifying context (httpx's CA bundle) for every session and pool: building one costs ~20 ms."""
    return httpx.create_ssl_context()
