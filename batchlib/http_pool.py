"""An httpx transport whose connection pool stays cheap under many concurrent requests.

httpcore's pool matches every queued request against every connection whenever one changes
state, so its CPU cost grows with (requests in flight x connections): one pool of 200
connections at 50 concurrent requests cost ~7 ms of CPU per request here, one pool of 500
under 500 requests took seconds per burst (docs/platform-api.md). ``ShardedTransport``
admits at most ``max_connections`` requests through one FIFO semaphore and sends each to the
least busy of many pools of ``SHARD_SIZE`` connections, which always has a free one.

Used by the Kubo client (pin_sync stats one pin per request); the platform client uses
aiohttp instead (``batchlib/http_wire.py``), which is cheaper still.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

import httpx

from batchlib.http_wire import ssl_context

__all__ = ["ShardedTransport"]


class ShardedTransport(httpx.AsyncBaseTransport):
    SHARD_SIZE = 2

    def __init__(self, max_connections: int) -> None:
        count = max(1, math.ceil(max_connections / self.SHARD_SIZE))
        limits = httpx.Limits(max_connections=self.SHARD_SIZE, max_keepalive_connections=self.SHARD_SIZE)
        verify = ssl_context()  # one context for all pools
        self._shards = [httpx.AsyncHTTPTransport(limits=limits, verify=verify) for _ in range(count)]
        self._busy = [0] * count
        self._gate = asyncio.Semaphore(max_connections)

    @property
    def idle(self) -> bool:
        """Every admitted request released its slot (tests: resets and abandoned bodies too)."""
        return sum(self._busy) == 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._gate.acquire()
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._release(index)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        stream = _ReleasingStream(response.stream, lambda: self._release(index))
        return httpx.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def _release(self, index: int) -> None:
        self._busy[index] -= 1
        self._gate.release()

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that reports once when it is closed (its connection is free again)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None
        await self._stream.aclose()
