"""Plumbing shared by the loopback simulators: a tiny raw-ASGI toolkit and server runners.

The simulators are bare ASGI callables (no framework) served by uvicorn with access logs
off, so one process holds thousands of concurrent requests on a couple of cores.
``http="auto"`` and ``loop="auto"`` pick httptools/uvloop (pinned in requirements.txt: with
h11/asyncio a simulator adds ~5 ms to every answer at 1,000 req/s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import uvicorn

__all__ = [
    "AbruptClose",
    "Scope",
    "Receive",
    "Send",
    "ASGIApp",
    "read_body",
    "send_body",
    "send_json",
    "query_params",
    "bind_socket",
    "make_server",
    "ServerThread",
    "ServerProcess",
    "announce",
    "sleep_until",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READY_PREFIX = "SIMULATOR_URL="


async def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline``: never early. uvloop's timers have
    millisecond granularity and may fire up to 1 ms before a plain ``asyncio.sleep`` ends."""
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)


class AbruptClose(Exception):
    """Raised by an app after starting a response: uvicorn then drops the connection."""


class _DropAbruptClose(logging.Filter):
    """Keep uvicorn's "Exception in ASGI application" quiet for deliberate connection drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, AbruptClose)


async def read_body(receive: Receive, limit: int = 1 << 16) -> bytes | None:
    """The whole request body, or None when it is larger than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = b"application/json",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_body(send, status, body, headers=headers)


def query_params(scope: Scope) -> dict[str, str]:
    """Last value of each query parameter."""
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: the OS picks a free one, with no race)."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP
    # (with proto 0, every answer written in two parts waits ~40 ms for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(8192)  # connections queue from now on, even before the server loop runs
    sock.set_inheritable(True)
    return sock


def make_server(app: ASGIApp, *, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server tuned for load: no access log, no lifespan, big backlog."""
    logging.getLogger("uvicorn.error").addFilter(_DropAbruptClose())
    config = uvicorn.Config(
        app,
        http="auto",
        loop="auto",
        lifespan="off",
        access_log=False,
        log_level=log_level,
        backlog=8192,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=1,
        server_header=False,
        date_header=False,
    )
    return uvicorn.Server(config)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


class ServerThread:
    """Serve an ASGI app on a loopback port (default: a free one) from a daemon thread."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = bind_socket(host, port)
        self._server = make_server(app)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self.url = _url(self._sock)

    def start(self, timeout: float = 10.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class ServerProcess:
    """Run ``python -m <module> --port 0 ...`` in a child process with its own CPU.

    The child prints ``SIMULATOR_URL=<url>`` once it listens; we read that line.
    """

    def __init__(self, module: str, args: Iterable[str] = ()) -> None:
        self._cmd = [sys.executable, "-m", module, "--port", "0", *args]
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> str:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            if line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX) :].strip()
                return self.url
        self.stop()
        raise RuntimeError(f"simulator process did not start: {' '.join(self._cmd)}")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None


def announce(sock: socket.socket) -> None:
    """Print the ready line a parent ``ServerProcess`` waits for."""
    print(f"{READY_PREFIX}{_url(sock)}", flush=True)
