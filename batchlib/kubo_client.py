"""Async client for the few Kubo RPC calls ``pin_sync`` needs (see docs/kubo-api.md).

    async with KuboClient.from_settings(settings, tenant_id) as kubo:
        async with aclosing(kubo.iter_pins()) as pins:
            async for pin in pins:                       # streamed, never the whole list in memory
                stat = await kubo.stat(pin.cid)          # PinNotFound if it vanished meanwhile

Errors (``batchcore.errors``, all ``KuboError``, none a ``PlatformError``):

    KuboUnavailable       5xx, timeouts, connection errors past the retry budget;
                          a pin/ls stream that breaks before its clean end
    KuboRateLimited       429 past the retry budget
    KuboRejected          400/403/404/405, or a 500 that no retry can fix (invalid path)
    └── PinNotFound       files/stat says the block is gone: the pin disappeared. Never retried.
    BadKuboResponse       a body or line that is not the JSON we expect, or is too large

Each call makes at most ``retry.attempts`` (1 + ``max_retries``) requests, waiting as the
``RetryPolicy`` (``batchlib.backoff``) says. Only the opening of a pin/ls stream is
retried: once lines were yielded, a break raises, and the caller lists again from the start.

Requests go over the injected ``Wire`` (``batchlib.http_wire``), by default ``AiohttpWire`` like
the platform client: one HTTP library, one seam, for both outside services.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

from batchcore.errors import BadKuboResponse, KuboRateLimited, KuboRejected, KuboUnavailable, PinNotFound
from batchcore.settings import Settings
from batchlib.backoff import RetriesExhausted, RetryPolicy, parse_retry_after
from batchlib.http_wire import AiohttpWire, Limits, Reply, Stream, StreamBroken, Wire, WireClient, http_options

__all__ = ["KuboClient", "PinRef", "PinStat", "PinType", "PinNotFound"]

PinType = Literal["recursive", "direct", "indirect", "all"]
T = TypeVar("T")

DEFAULT_HEADERS = {"User-Agent": "batchlib-kubo-client"}
_PIN_TYPES = ("recursive", "direct", "indirect", "all")
_CID_RE = re.compile(r"[A-Za-z0-9]{8,128}")  # multibase CIDv1 or base58 CIDv0
_NOT_FOUND_HINTS = ("not found", "could not find", "is not pinned")
_TERMINAL_HINTS = ("invalid path", "invalid cid", "paths must start")


@dataclass(frozen=True, slots=True)
class PinRef:
    """One line of ``pin/ls``."""

    cid: str
    type: str


@dataclass(frozen=True, slots=True)
class PinStat:
    """``files/stat`` of ``/ipfs/<cid>``: sizes in bytes, ``blocks`` = direct child blocks."""

    cid: str
    size: int
    cumulative_size: int
    blocks: int
    type: str


class _Transient(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, detail: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code
        self.retry_after = retry_after


class KuboClient(WireClient):
    """One connection pool to a Kubo RPC endpoint; use it as an async context manager.

    ``wire`` replaces the default ``AiohttpWire`` (built from the timeouts, caps and pool size
    given here); unit tests inject a scripted one. ``retry`` gives the attempts and the waits.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        body_timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        max_line_bytes: int = 64 * 1024,
        max_body_bytes: int = 1_000_000,
        max_connections: int = 100,
        wire: Wire | None = None,
    ) -> None:
        limits = Limits(connect_timeout, read_timeout, body_timeout, max_body_bytes, max_connections)
        self._wire: Wire = wire or AiohttpWire(base_url, limits, DEFAULT_HEADERS)
        self.retry = retry
        self._max_line_bytes = max_line_bytes
        self._max_body_bytes = max_body_bytes

    @classmethod
    def from_settings(cls, settings: Settings, tenant_id: int | None = None, **overrides: Any) -> KuboClient:
        """A client of the tenant's node (``BATCH_KUBO_NODES``, else ``BATCH_KUBO_URL``) with the
        ``BATCH_HTTP_*`` settings."""
        return cls(settings.kubo_url_for(tenant_id), **{**http_options(settings), **overrides})

    # -- calls ------------------------------------------------------------------------------
    async def version(self) -> str:
        """The node's version string (``POST /api/v0/version``): a cheap liveness probe."""
        body = await self._retrying("version", lambda: self._post_json("version", {}))
        version = body.get("Version")
        if not isinstance(version, str):
            raise BadKuboResponse("kubo version: the answer has no Version string")
        return version

    async def stat(self, cid: str) -> PinStat:
        """``files/stat`` of ``/ipfs/<cid>`` (offline, so a missing block fails fast).

        Raises PinNotFound, without retrying, when the node no longer has the pin's root block.
        """
        if not _CID_RE.fullmatch(cid):
            raise KuboRejected(f"kubo files/stat: {cid[:80]!r} is not a CID")
        params = {"arg": f"/ipfs/{cid}", "offline": "true"}
        body = await self._retrying("files/stat", lambda: self._post_json("files/stat", params, cid=cid))
        try:
            values = {key: body[key] for key in ("Size", "CumulativeSize", "Blocks")}
            kind = body.get("Type", "")
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
                raise TypeError
            if not isinstance(kind, str):
                raise TypeError
        except (KeyError, TypeError):
            raise BadKuboResponse(f"kubo files/stat: unexpected answer for {cid}: {str(body)[:200]}") from None
        return PinStat(cid, values["Size"], values["CumulativeSize"], values["Blocks"], kind)

    async def iter_pins(self, type: PinType = "recursive") -> AsyncIterator[PinRef]:
        """Stream ``pin/ls?stream=true`` line by line.

        Raises KuboUnavailable("kubo stream ended early ...") if the body breaks before its
        clean end (connection reset, incomplete chunked body, read timeout, or an error object in
        the stream), and BadKuboResponse on a line that is not a pin. Wrap the iterator in
        ``contextlib.aclosing`` when you may stop early, so the connection is released at once.
        """
        if type not in _PIN_TYPES:
            raise ValueError(f"pin type must be one of {', '.join(_PIN_TYPES)}, got {type!r}")
        params = {"type": type, "stream": "true"}
        stream = await self._retrying("pin/ls", lambda: self._open("pin/ls", params))
        count = 0
        try:
            async with aclosing(self._lines(stream, lambda: count)) as lines:
                async for line in lines:
                    for pin in _parse_pin_line(line, count):
                        count += 1
                        yield pin
        finally:
            await stream.aclose()

    async def list_pins(self, type: PinType = "recursive") -> list[PinRef]:
        """All pins in a list (the stream, collected)."""
        async with aclosing(self.iter_pins(type)) as pins:
            return [pin async for pin in pins]

    # -- plumbing ---------------------------------------------------------------------------
    async def _retrying(self, endpoint: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` as the retry policy says while it fails transiently."""
        try:
            return await self.retry.retrying(attempt, transient=_Transient)
        except RetriesExhausted as spent:
            last, attempts = spent.last, spent.attempts
        assert isinstance(last, _Transient)
        error = KuboRateLimited if last.status_code == 429 else KuboUnavailable
        raise error(f"kubo {endpoint} unavailable after {attempts} attempt(s): {last.detail}", status_code=last.status_code)

    async def _open(self, endpoint: str, params: dict[str, str]) -> Stream:
        """One streamed request; returns the open stream if it is a 200, else raises (and closes it)."""
        stream = await self._wire.open("POST", _path(endpoint, params), {})
        if isinstance(stream, str):
            raise _Transient(stream)
        if stream.status == 200:
            return stream
        try:
            body = await self._error_body(stream)
        finally:
            await stream.aclose()
        raise _failure(endpoint, Reply(stream.status, stream.headers, body), None)

    async def _error_body(self, stream: Stream) -> bytes:
        """At most max_body_bytes of a refusal's body (the rest is not read)."""
        buffer = bytearray()
        try:
            async for chunk in stream.chunks():
                buffer += chunk
                if len(buffer) > self._max_body_bytes:
                    break
        except StreamBroken as exc:
            raise _Transient(exc.reason) from None
        return bytes(buffer[: self._max_body_bytes])

    async def _post_json(self, endpoint: str, params: dict[str, str], cid: str | None = None) -> dict[str, Any]:
        """One request whose 200 body is a single JSON object."""
        reply = await self._wire.send("POST", _path(endpoint, params), {}, None)
        if isinstance(reply, str):
            raise _Transient(reply)
        if reply.status != 200:
            raise _failure(endpoint, reply, cid)
        if reply.body is None:
            raise BadKuboResponse(f"kubo {endpoint}: the answer exceeds {self._max_body_bytes} bytes")
        try:
            value = json.loads(reply.body)
        except ValueError:
            raise BadKuboResponse(f"kubo {endpoint}: the answer is not JSON: {reply.body[:120]!r}") from None
        if not isinstance(value, dict):
            raise BadKuboResponse(f"kubo {endpoint}: expected a JSON object, got {type(value).__name__}")
        return value

    async def _lines(self, stream: Stream, count: Callable[[], int]) -> AsyncIterator[bytes]:
        """Complete NDJSON lines; a break before the clean end becomes KuboUnavailable."""
        buffer = b""
        try:
            async for chunk in stream.chunks():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > self._max_line_bytes:
                    raise BadKuboResponse(f"kubo pin/ls: a line exceeds {self._max_line_bytes} bytes")
                for line in lines:
                    if len(line) > self._max_line_bytes:
                        raise BadKuboResponse(f"kubo pin/ls: a line exceeds {self._max_line_bytes} bytes")
                    if line.strip():
                        yield line
        except StreamBroken as exc:
            raise KuboUnavailable(f"kubo stream ended early after {count()} pins: {exc.reason}") from None
        if buffer.strip():
            yield buffer  # a clean end without a final newline


def _path(endpoint: str, params: dict[str, str]) -> str:
    return f"/api/v0/{endpoint}?{urlencode(params)}" if params else f"/api/v0/{endpoint}"


def _parse_pin_line(line: bytes, seen: int) -> list[PinRef]:
    """The pins in one line: ``{"Cid","Type"}``, or the non-stream ``{"Keys": {...}}`` shape."""
    try:
        value = json.loads(line)
    except ValueError:
        raise BadKuboResponse(f"kubo pin/ls: line {seen + 1} is not JSON: {line[:120]!r}") from None
    if isinstance(value, dict) and value.get("Type") == "error" and "Message" in value:
        raise KuboUnavailable(f"kubo stream ended early after {seen} pins: {str(value['Message'])[:200]}")
    if isinstance(value, dict) and isinstance(value.get("Cid"), str) and isinstance(value.get("Type"), str):
        return [PinRef(value["Cid"], value["Type"])]
    if isinstance(value, dict) and isinstance(value.get("Keys"), dict):
        try:
            return [PinRef(cid, info["Type"]) for cid, info in value["Keys"].items() if isinstance(info["Type"], str)]
        except (KeyError, TypeError):
            pass
    raise BadKuboResponse(f"kubo pin/ls: line {seen + 1} is not a pin: {line[:120]!r}")


def _failure(endpoint: str, reply: Reply, cid: str | None) -> Exception:
    """Map a non-200 answer to the error to raise (``_Transient`` means: try again)."""
    status = reply.status
    message = _kubo_message(reply.body or b"")
    lowered = message.lower()
    if status == 500 and cid is not None and any(hint in lowered for hint in _NOT_FOUND_HINTS):
        return PinNotFound(cid, message)
    if status == 429 or (status >= 500 and not any(hint in lowered for hint in _TERMINAL_HINTS)):
        retry_after = parse_retry_after(reply.headers.get("retry-after"))
        return _Transient(f"HTTP {status}: {message}", status_code=status, retry_after=retry_after)
    if 400 <= status < 600:
        return KuboRejected(f"kubo {endpoint} refused the call (HTTP {status}): {message}", status_code=status)
    return BadKuboResponse(f"kubo {endpoint}: unexpected HTTP {status}", status_code=status)


def _kubo_message(body: bytes) -> str:
    """The ``Message`` of Kubo's error object, else the start of the body as text."""
    try:
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("Message"), str):
            return value["Message"][:300]
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
