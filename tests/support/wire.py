"""A scripted ``Wire`` for pure unit tests of the clients: no socket, answers from a handler.

Production and the simulator tests use ``AiohttpWire``; this fake speaks the same protocol
(``batchlib.http_wire.Wire``), so a client under test runs the code it runs in production
above the wire. A handler gets the ``Sent`` request and returns what the wire would:

- a ``Reply`` (``reply(200, json={...})``), for ``send``;
- a reason string (``"connection error (ClientConnectorError)"``), a transport failure;
- a ``Chunks`` (status, headers, chunks, optionally ending in ``StreamBroken``), for ``open``.

Handlers may be async (to hold a request in flight).
"""

from __future__ import annotations

import inspect
import json as jsonlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from batchlib.http_wire import Reply, StreamBroken


@dataclass
class Sent:
    """One request as the wire got it."""

    method: str
    path: str  # with the query string
    headers: CIMultiDictProxy[str]
    content: bytes | None

    def json(self) -> Any:
        assert self.content is not None
        return jsonlib.loads(self.content)


@dataclass
class Chunks:
    """A streamed answer: the body in pieces; a ``StreamBroken`` in them breaks the stream there."""

    status: int
    chunks: list[bytes | StreamBroken]
    headers: Mapping[str, str] = field(default_factory=lambda: CIMultiDictProxy(CIMultiDict()))
    closed: bool = False

    async def iterate(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, StreamBroken):
                raise chunk
            yield chunk


class _Stream:
    """The ``Stream`` view of a ``Chunks`` answer."""

    def __init__(self, answer: Chunks) -> None:
        self._answer = answer
        self.status = answer.status
        self.headers = answer.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._answer.iterate()

    async def aclose(self) -> None:
        self._answer.closed = True


Answer = Reply | str | Chunks
Handler = Callable[[Sent], Answer | Awaitable[Answer]]


def headers_of(items: Mapping[str, str] | None = None) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(items or {}))


def reply(status: int, *, json: Any = None, text: str | None = None, content: bytes | None = None,
          headers: Mapping[str, str] | None = None) -> Reply:
    """A ``Reply`` like the wire returns it: ``json``, ``text`` or raw ``content`` as the body."""
    if json is not None:
        content = jsonlib.dumps(json).encode()
    elif text is not None:
        content = text.encode()
    return Reply(status, headers_of(headers), content if content is not None else b"")


def sequence(*answers: Answer) -> Handler:
    """Answer with the given answers in order, then repeat the last."""
    queue = list(answers)
    return lambda sent: queue.pop(0) if len(queue) > 1 else queue[0]


class ScriptedWire:
    """A ``Wire`` whose answers come from ``handler``; every request is kept in ``sent``."""

    def __init__(self, handler: Handler, max_body_bytes: int | None = None) -> None:
        self._handler = handler
        self._cap = max_body_bytes  # like Limits.max_body_bytes: a longer Reply body becomes None
        self.sent: list[Sent] = []
        self.closed = False

    async def _answer(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Answer:
        sent = Sent(method, path, headers_of(headers), content)
        self.sent.append(sent)
        answer = self._handler(sent)
        return await answer if inspect.isawaitable(answer) else answer

    async def send(self, method: str, path: str, headers: dict[str, str], content: bytes | None) -> Reply | str:
        answer = await self._answer(method, path, headers, content)
        if isinstance(answer, Chunks):  # a streamed answer read whole, as AiohttpWire.send does
            body = b"".join(c for c in answer.chunks if isinstance(c, bytes))
            if any(isinstance(c, StreamBroken) for c in answer.chunks):
                return "connection error (truncated or undecodable body)"
            answer = Reply(answer.status, answer.headers, body)
        if isinstance(answer, Reply) and self._cap is not None and answer.body is not None and len(answer.body) > self._cap:
            return Reply(answer.status, answer.headers, None)
        return answer

    async def open(self, method: str, path: str, headers: dict[str, str]) -> _Stream | str:
        answer = await self._answer(method, path, headers, None)
        if isinstance(answer, Reply):
            answer = Chunks(answer.status, [answer.body or b""], answer.headers)
        return answer if isinstance(answer, str) else _Stream(answer)

    async def aclose(self) -> None:
        self.closed = True
