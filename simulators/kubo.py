"""A loopback stand-in for the slice of the Kubo RPC API that the ``pin_sync`` batch uses.

    python -m simulators.kubo --port 5001 --pins 10000 --seed 1 [--latency-ms 5]

Kubo calls served (shapes as in docs.ipfs.tech/reference/kubo/rpc, see docs/kubo-api.md):

    POST /api/v0/pin/ls?type=recursive&stream=true   NDJSON, one {"Cid","Type"} per line, chunked
    POST /api/v0/pin/ls?type=recursive               {"Keys": {cid: {"Type": ...}}}
    POST /api/v0/files/stat?arg=/ipfs/<cid>          {"Hash","Size","CumulativeSize","Blocks","Type",...}
    POST /api/v0/version                             {"Version","Commit","Repo","System","Golang"}
    any other method on /api/v0/*                    405, like Kubo (the RPC API is POST-only)

Errors use Kubo's body ``{"Message": ..., "Code": 0, "Type": "error"}`` with HTTP 500 (Code 1 -> 400).
A pin that is gone answers files/stat like an offline Kubo whose block is missing:
``block was not found locally (offline): ipld: could not find <cid>``.

Control endpoints (not Kubo): ``POST /_sim/config`` (knobs, JSON), ``POST /_sim/pins``
(``{"add": n, "remove": [cids]}``), ``GET /_sim/calls``, ``GET /_sim/stats``, ``POST /_sim/reset``.

CIDs are real CIDv1 strings (dag-pb, sha2-256, base32 multibase ``b``), the digest being
``sha256("kubo-sim:<seed>:<index>")``; so every run with the same seed lists the same pins.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import uvicorn

from simulators._http import (
    AbruptClose,
    Receive,
    Scope,
    Send,
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

__all__ = ["SimConfig", "KuboState", "KuboApp", "KuboSimulator", "make_cid", "main"]

KUBO_VERSION = {"Version": "0.39.0", "Commit": "sim", "Repo": "17", "System": "amd64/linux", "Golang": "go1.25.2"}
PIN_TYPES = ("recursive", "direct", "indirect", "all")
_LINES_PER_CHUNK = 256  # NDJSON lines per HTTP chunk when stream_delay_ms is 0
_CID_RE = re.compile(r"b[a-z2-7]{10,}|Qm[1-9A-HJ-NP-Za-km-z]{44}")  # CIDv1 base32 or CIDv0
_CID_PREFIX = bytes([0x01, 0x70, 0x12, 0x20])  # CIDv1, dag-pb, sha2-256, 32-byte digest


def make_cid(seed: int, index: int) -> str:
    """The deterministic CIDv1 (base32, ``bafybei...``) of pin number ``index`` for ``seed``."""
    digest = hashlib.sha256(f"kubo-sim:{seed}:{index}".encode()).digest()
    return "b" + base64.b32encode(_CID_PREFIX + digest).decode().lower().rstrip("=")


def _unit(cid: str, salt: str) -> float:
    """A stable number in [0, 1) for a CID: decides membership in fractions (vanished pins)."""
    digest = hashlib.sha256(f"{salt}:{cid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _stat_body(cid: str) -> dict[str, Any]:
    """The files/stat answer for a UnixFS file, with sizes derived from the CID."""
    digest = hashlib.sha256(cid.encode()).digest()
    blocks = 1 + digest[0] % 64
    size = 1 + int.from_bytes(digest[1:5], "big") % (blocks * 262_144)
    return {
        "Hash": cid,
        "Size": size,
        "CumulativeSize": size + 14 * blocks + 11,  # payload plus protobuf framing per link
        "Blocks": blocks,
        "Type": "file",
        "WithLocality": False,
    }


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every knob; ``pins`` and ``seed`` shape the pin set, the rest inject latency and faults."""

    pins: int = 100
    seed: int = 1
    latency_ms: float = 0.0  # added to every /api/v0 call
    stream_delay_ms: float = 0.0  # added before each NDJSON line of pin/ls
    error_rate: float = 0.0  # chance that a files/stat call answers 500
    stat_fail_first: int = 0  # the first N files/stat calls of each CID answer 500
    vanish_fraction: float = 0.0  # listed pins whose files/stat says "not found"
    die_after_lines: int | None = None  # drop the connection after N pin/ls lines
    stream_error_after_lines: int | None = None  # end pin/ls with a Kubo error object after N lines

    def replace(self, **knobs: Any) -> "SimConfig":
        """A copy with ``knobs`` changed; unknown names or bad values raise ValueError."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(knobs) - set(fields))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(fields)}")
        values: dict[str, Any] = {}
        for name, value in knobs.items():
            if value is None and name in ("die_after_lines", "stream_error_after_lines"):
                values[name] = None
                continue
            kind = float if name in ("latency_ms", "stream_delay_ms", "error_rate", "vanish_fraction") else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"knob {name} must be a non-negative number, got {value!r}")
            if kind is int and value != int(value):
                raise ValueError(f"knob {name} must be an integer, got {value!r}")
            values[name] = kind(value)
        for name in ("error_rate", "vanish_fraction"):
            if values.get(name, 0.0) > 1:
                raise ValueError(f"knob {name} must be between 0 and 1")
        return dataclasses.replace(self, **values)


class KuboState:
    """Pins, knobs and call counters; thread-safe (the server thread and the test share it)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._initial = config or SimConfig()
        self._reset(self._initial)

    def _reset(self, config: SimConfig) -> None:
        self.config = config
        self._pins: dict[str, None] = dict.fromkeys(make_cid(config.seed, i) for i in range(config.pins))
        self._next_index = config.pins
        self._rng = random.Random(config.seed)
        self._calls: Counter[str] = Counter()
        self._stat_calls: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0

    # -- control (tests, /_sim/*) ---------------------------------------------------------
    def configure(self, **knobs: Any) -> SimConfig:
        """Change knobs; ``pins`` or ``seed`` regenerate the pin set (index 0..pins-1)."""
        with self._lock:
            config = self.config.replace(**knobs)
            if "pins" in knobs or "seed" in knobs:
                self._pins = dict.fromkeys(make_cid(config.seed, i) for i in range(config.pins))
                self._next_index = config.pins
            self.config = config
            return config

    def reset(self) -> None:
        """Back to the start-up pins and knobs, counters at zero."""
        with self._lock:
            self._reset(self._initial)

    def add(self, n: int) -> list[str]:
        """Pin ``n`` new deterministic CIDs (indexes continue after the last one made)."""
        with self._lock:
            cids = [make_cid(self.config.seed, self._next_index + i) for i in range(n)]
            self._next_index += n
            self._pins.update(dict.fromkeys(cids))
            self.config = dataclasses.replace(self.config, pins=len(self._pins))
            return cids

    def remove(self, cids: list[str]) -> int:
        """Unpin (and forget the blocks of) ``cids``; returns how many were pinned."""
        with self._lock:
            removed = 0
            for cid in cids:
                if cid in self._pins:
                    del self._pins[cid]
                    removed += 1
            self.config = dataclasses.replace(self.config, pins=len(self._pins))
            return removed

    def pins(self) -> list[str]:
        """Pinned CIDs in listing order."""
        with self._lock:
            return list(self._pins)

    def vanished(self) -> list[str]:
        """Pinned CIDs that files/stat reports as not found under the current vanish_fraction."""
        with self._lock:
            fraction = self.config.vanish_fraction
            return [cid for cid in self._pins if _unit(cid, "vanish") < fraction]

    def calls(self) -> dict[str, Any]:
        """Calls by endpoint (``pin/ls``, ``files/stat``, ``version``) and files/stat calls by CID."""
        with self._lock:
            return {
                "total": sum(self._calls.values()),
                "by_endpoint": dict(self._calls),
                "stat_by_cid": dict(self._stat_calls),
            }

    def stats(self) -> dict[str, Any]:
        """Counters plus the current knobs."""
        with self._lock:
            return {
                "pins": len(self._pins),
                "by_endpoint": dict(self._calls),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "streams": dict(self._streams),
                "config": dataclasses.asdict(self.config),
            }

    # -- used by the app ------------------------------------------------------------------
    def enter(self, endpoint: str) -> SimConfig:
        with self._lock:
            self._calls[endpoint] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return self.config

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def count_stream(self, outcome: str) -> None:
        with self._lock:
            self._streams[outcome] += 1

    def stat(self, cid: str) -> dict[str, Any] | str:
        """The files/stat body for ``cid``, or ``"fail"`` (injected 500) or ``"missing"``."""
        with self._lock:
            self._stat_calls[cid] += 1
            config = self.config
            if self._stat_calls[cid] <= config.stat_fail_first or self._rng.random() < config.error_rate:
                return "fail"
            if cid not in self._pins or _unit(cid, "vanish") < config.vanish_fraction:
                return "missing"
        return _stat_body(cid)


def _kubo_error(message: str, code: int = 0) -> dict[str, Any]:
    return {"Message": message, "Code": code, "Type": "error"}


def _truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, as Kubo reads boolean flags."""
    return (value or "").lower() in ("1", "t", "true")


class KuboApp:
    """The raw ASGI app over a :class:`KuboState`."""

    def __init__(self, state: KuboState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith("/_sim/"):
            await self._control(method, path, receive, send)
        elif path.startswith("/api/v0/"):
            await self._rpc(method, path.removeprefix("/api/v0/"), scope, receive, send)
        else:
            await send_body(send, 404, b"404 page not found\n", content_type=b"text/plain; charset=utf-8")

    async def _rpc(self, method: str, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        handler = {"pin/ls": self._pin_ls, "files/stat": self._files_stat, "version": self._version}.get(endpoint)
        if handler is None:
            await send_body(send, 404, b"404 page not found\n", content_type=b"text/plain; charset=utf-8")
            return
        if method != "POST":
            text = b"text/plain; charset=utf-8"
            await send_body(send, 405, b"405 - Method Not Allowed\n", content_type=text, headers=[(b"allow", b"POST")])
            return
        await read_body(receive)
        config = self.state.enter(endpoint)
        try:
            if config.latency_ms:
                await sleep_until(started + config.latency_ms / 1000)
            await handler(query_params(scope), config, receive, send)
        finally:
            self.state.leave()

    async def _version(self, params: dict[str, str], config: SimConfig, receive: Receive, send: Send) -> None:
        await send_json(send, 200, KUBO_VERSION)

    async def _files_stat(self, params: dict[str, str], config: SimConfig, receive: Receive, send: Send) -> None:
        path = params.get("arg")
        if not path:
            await send_json(send, 400, _kubo_error('argument "path" is required', code=1))
            return
        if not path.startswith("/"):
            await send_json(send, 500, _kubo_error("paths must start with a leading slash"))
            return
        cid = path.removeprefix("/ipfs/").split("/", 1)[0]
        if not path.startswith("/ipfs/"):
            await send_json(send, 500, _kubo_error("file does not exist"))  # the simulated MFS is empty
            return
        if not _CID_RE.fullmatch(cid):
            message = f'invalid path "{path}": invalid cid: selected encoding not supported'
            await send_json(send, 500, _kubo_error(message))
            return
        result = self.state.stat(cid)
        if result == "fail":
            await send_json(send, 500, _kubo_error("simulated failure: context deadline exceeded"))
        elif result == "missing":
            message = f"block was not found locally (offline): ipld: could not find {cid}"
            await send_json(send, 500, _kubo_error(message))
        else:
            await send_json(send, 200, result)

    async def _pin_ls(self, params: dict[str, str], config: SimConfig, receive: Receive, send: Send) -> None:
        kind = params.get("type", "all")
        if kind not in PIN_TYPES:
            message = f"invalid type '{kind}', must be one of {{direct, indirect, recursive, all}}"
            await send_json(send, 400, _kubo_error(message, code=1))
            return
        cids = self.state.pins() if kind in ("recursive", "all") else []
        if not _truthy(params.get("stream")):
            await send_json(send, 200, {"Keys": {cid: {"Type": "recursive"} for cid in cids}})
            return
        await self._stream_pins(cids, config, receive, send)

    async def _stream_pins(self, cids: list[str], config: SimConfig, receive: Receive, send: Send) -> None:
        """NDJSON over a chunked body, honouring stream_delay_ms, die_after_lines, stream_error_after_lines."""
        headers = [
            (b"content-type", b"application/json"),
            (b"x-chunked-output", b"1"),
            (b"trailer", b"X-Stream-Error"),
            (b"vary", b"Origin"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.state.count_stream("started")
        die, fail = config.die_after_lines, config.stream_error_after_lines
        cut = min((n for n in (die, fail) if n is not None), default=len(cids))
        end = min(cut, len(cids))
        per_chunk = 1 if config.stream_delay_ms else _LINES_PER_CHUNK
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            for start in range(0, end, per_chunk):
                if config.stream_delay_ms:
                    await asyncio.sleep(config.stream_delay_ms / 1000)
                if gone.is_set():
                    self.state.count_stream("client_gone")
                    return
                batch = cids[start : min(start + per_chunk, end)]
                await send({"type": "http.response.body", "body": _lines(batch), "more_body": True})
            if die is not None and die == cut:
                half_line = _lines(cids[end : end + 1])[:12]
                await send({"type": "http.response.body", "body": half_line, "more_body": True})
                self.state.count_stream("died")
                raise AbruptClose(f"die_after_lines={die}")  # uvicorn drops the connection
            if fail is not None and fail == cut:
                error = json.dumps(_kubo_error("simulated failure: pin listing aborted")).encode() + b"\n"
                await send({"type": "http.response.body", "body": error})
                self.state.count_stream("errored")
                return
            await send({"type": "http.response.body", "body": b""})
            self.state.count_stream("completed")
        finally:
            watcher.cancel()

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        route = (method, path)
        if route == ("GET", "/_sim/calls"):
            await send_json(send, 200, self.state.calls())
        elif route == ("GET", "/_sim/stats"):
            await send_json(send, 200, self.state.stats())
        elif route == ("POST", "/_sim/reset"):
            self.state.reset()
            await send_json(send, 200, {"ok": True})
        elif route in (("POST", "/_sim/config"), ("POST", "/_sim/pins")):
            try:
                body = json.loads(await read_body(receive) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("expected a JSON object")
                if path == "/_sim/config":
                    result: dict[str, Any] = dataclasses.asdict(self.state.configure(**body))
                else:
                    result = self._edit_pins(body)
            except (ValueError, TypeError) as exc:
                await send_json(send, 400, {"error": str(exc)})
                return
            await send_json(send, 200, result)
        else:
            await send_json(send, 404, {"error": f"no simulator route {method} {path}"})

    def _edit_pins(self, body: dict[str, Any]) -> dict[str, Any]:
        add, remove = body.get("add", 0), body.get("remove", [])
        if isinstance(add, bool) or not isinstance(add, int) or add < 0:
            raise ValueError("add must be a non-negative integer")
        if not isinstance(remove, list) or not all(isinstance(c, str) for c in remove):
            raise ValueError("remove must be a list of CID strings")
        removed = self.state.remove(remove)
        added = self.state.add(add)
        return {"added": added, "removed": removed, "pins": len(self.state.pins())}


def _lines(cids: list[str]) -> bytes:
    return b"".join(b'{"Cid":"%s","Type":"recursive"}\n' % cid.encode() for cid in cids)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


class KuboSimulator:
    """The simulator on a free loopback port, served from a background thread.

    >>> with KuboSimulator(pins=1000, seed=1, vanish_fraction=0.1) as kubo:
    ...     client = KuboClient(kubo.url)
    """

    def __init__(self, *, pins: int = 100, seed: int = 1, host: str = "127.0.0.1", **knobs: Any) -> None:
        self.state = KuboState(SimConfig(pins=pins, seed=seed).replace(**knobs))
        self._server = ServerThread(KuboApp(self.state), host=host)
        self.url = self._server.url

    def __enter__(self) -> "KuboSimulator":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def configure(self, **knobs: Any) -> SimConfig:
        return self.state.configure(**knobs)

    def pins(self) -> list[str]:
        return self.state.pins()

    def vanished(self) -> list[str]:
        return self.state.vanished()

    def add(self, n: int) -> list[str]:
        return self.state.add(n)

    def remove(self, cids: list[str]) -> int:
        return self.state.remove(cids)

    def calls(self) -> dict[str, Any]:
        return self.state.calls()

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def reset(self) -> None:
        self.state.reset()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m simulators.kubo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001, help="0 picks a free port and prints SIMULATOR_URL=")
    parser.add_argument("--pins", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-delay-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--stat-fail-first", type=int, default=0)
    parser.add_argument("--vanish-fraction", type=float, default=0.0)
    parser.add_argument("--die-after-lines", type=int, default=None)
    parser.add_argument("--stream-error-after-lines", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = vars(parser.parse_args(argv))
    host, port, log_level = args.pop("host"), args.pop("port"), args.pop("log_level")
    state = KuboState(SimConfig().replace(**args))
    sock = bind_socket(host, port)
    sock.listen(2048)  # listen before announcing, so a parent's first request cannot be refused
    server: uvicorn.Server = make_server(KuboApp(state), log_level=log_level)
    announce(sock)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
