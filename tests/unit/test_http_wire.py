"""AiohttpWire, the production wire of both clients, against a tiny aiohttp server on loopback.

No service: the server runs in the test's own event loop. Each case is one thing the network or
a server can do; the wire must turn it into a Reply or a short reason, never an exception.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from batchlib.http_wire import AiohttpWire, Limits, StreamBroken

pytestmark = pytest.mark.unit

TOKEN = "at_secret_token_0001"
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def server(route: Route) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def wire_for(url: str, **limits: float) -> AiohttpWire:
    return AiohttpWire(url, Limits(**limits), {"User-Agent": "unit-test"})  # type: ignore[arg-type]


def run(coro):
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_reply_carries_status_headers_body_and_the_request_as_sent() -> None:
    seen: dict[str, object] = {}

    async def route(request: web.Request) -> web.Response:
        seen.update(method=request.method, path=request.path_qs, agent=request.headers.get("User-Agent"),
                    auth=request.headers.get("Authorization"), body=await request.read())
        return web.json_response({"ok": True}, status=201, headers={"Retry-After": "3"})

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url)
            reply = await wire.send("POST", "/v1/me/nickname?x=1", {"Authorization": f"Bearer {TOKEN}"}, b'{"a":1}')
            await wire.aclose()
            return reply

    reply = run(scenario())
    assert not isinstance(reply, str)
    assert (reply.status, reply.body, reply.headers["retry-after"]) == (201, b'{"ok": true}', "3")
    assert seen == {"method": "POST", "path": "/v1/me/nickname?x=1", "agent": "unit-test",
                    "auth": f"Bearer {TOKEN}", "body": b'{"a":1}'}


def test_a_declared_body_over_the_cap_is_not_read() -> None:
    async def route(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 5000)

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url, max_body_bytes=1000)
            reply = await wire.send("GET", "/", {}, None)
            idle = wire.idle
            await wire.aclose()
            return reply, idle

    reply, idle = run(scenario())
    assert not isinstance(reply, str) and reply.status == 200 and reply.body is None
    assert idle


def test_a_streamed_body_is_abandoned_at_the_cap() -> None:
    written = 0

    async def route(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse()
        await response.prepare(request)  # chunked: no length declared
        try:
            for _ in range(50_000):  # 50 MB if read to the end
                await response.write(b"x" * 1024)
                written += 1
                await asyncio.sleep(0)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url, max_body_bytes=10_000)
            reply = await wire.send("GET", "/", {}, None)
            idle = wire.idle
            await wire.aclose()
            return reply, idle

    reply, idle = run(scenario())
    assert not isinstance(reply, str) and reply.body is None
    assert idle  # the connection was closed, not kept with a body half read
    assert written < 50_000


def test_no_byte_for_read_timeout_is_a_read_timeout() -> None:
    async def route(request: web.Request) -> web.Response:
        await asyncio.sleep(0.6)
        return web.Response(text="late")

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url, read_timeout=0.2)
            reply = await wire.send("GET", "/", {}, None)
            await wire.aclose()
            return reply

    assert run(scenario()) == "timeout (ReadTimeout)"


def test_a_trickling_body_is_cut_by_the_body_timeout() -> None:
    """Each byte resets the read timeout; the body timeout bounds the whole body."""

    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(100):
                await response.write(b" ")
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        return response

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url, read_timeout=1, body_timeout=0.3)
            reply = await wire.send("GET", "/", {}, None)
            await wire.aclose()
            return reply

    assert run(scenario()) == "timeout (BodyTimeout)"


def test_a_body_cut_short_is_a_connection_error() -> None:
    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        request.transport.close()  # type: ignore[union-attr]
        return response

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url)
            reply = await wire.send("GET", "/", {}, None)
            await wire.aclose()
            return reply

    assert run(scenario()) == "connection error (truncated or undecodable body)"


def test_nothing_listening_is_a_connection_error_without_the_token() -> None:
    async def scenario():
        wire = wire_for(f"http://127.0.0.1:{free_port()}")
        reply = await wire.send("GET", "/v1/me", {"Authorization": f"Bearer {TOKEN}"}, None)
        stream = await wire.open("POST", "/api/v0/pin/ls", {"Authorization": f"Bearer {TOKEN}"})
        await wire.aclose()
        return reply, stream

    reply, stream = run(scenario())
    assert reply == stream == "connection error (ClientConnectorError)"


def test_a_stream_yields_as_the_body_arrives_and_reports_a_break() -> None:
    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"line 1\n")
        await asyncio.sleep(0.05)
        await response.write(b"line 2\n")
        if request.query.get("break"):
            request.transport.close()  # type: ignore[union-attr]  # mid-body: no final chunk
            return response
        await response.write_eof()
        return response

    async def read_all(wire: AiohttpWire, path: str) -> tuple[int, bytes, str | None]:
        stream = await wire.open("POST", path, {})
        assert not isinstance(stream, str)
        body, broken = b"", None
        try:
            async for chunk in stream.chunks():
                body += chunk
        except StreamBroken as exc:
            broken = exc.reason
        finally:
            await stream.aclose()
        return stream.status, body, broken

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url)
            whole = await read_all(wire, "/stream")
            cut = await read_all(wire, "/stream?break=1")
            idle = wire.idle
            await wire.aclose()
            return whole, cut, idle

    whole, cut, idle = run(scenario())
    assert whole == (200, b"line 1\nline 2\n", None)
    assert cut[:2] == (200, b"line 1\nline 2\n") and cut[2] is not None and cut[2].startswith("connection error")
    assert idle


def test_a_stream_closed_early_frees_its_connection() -> None:
    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for i in range(10_000):
                await response.write(b"%d\n" % i)
                await asyncio.sleep(0.001)
        except ConnectionError:
            pass
        return response

    async def scenario():
        async with server(route) as url:
            wire = wire_for(url)
            stream = await wire.open("POST", "/", {})
            assert not isinstance(stream, str)
            async for _ in stream.chunks():
                break
            busy = not wire.idle
            await stream.aclose()
            idle = wire.idle
            await wire.aclose()
            return busy, idle

    assert run(scenario()) == (True, True)
