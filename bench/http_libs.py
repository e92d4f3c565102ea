"""Client CPU per request of each HTTP layer against the two simulators (docs/benchmarks.md).

    python bench/http_libs.py [--requests 4000] [--concurrency 50] [--latency-ms 20]

Each simulator runs in its own process (its CPU is not counted). For each layer the same
requests are sent ``--concurrency`` at a time after a warm-up, and the client process's CPU
time (``time.process_time``) is divided by the number of requests:

- platform: ``GET /v1/me`` with a bearer token, body parsed with ``json.loads``;
- Kubo: ``POST /api/v0/files/stat?arg=/ipfs/<cid>&offline=true``, body parsed likewise;
- then our two clients end to end: ``PlatformClient.get_me`` and ``KuboClient.stat``.

Layers: ``httpx.AsyncClient`` (one pool of ``--concurrency`` connections) and
``aiohttp.ClientSession`` through ``AiohttpWire`` (what both clients use). The figures of the
Kubo client's former httpx transport (pools of 2 connections) are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from batchlib.http_wire import AiohttpWire, Limits  # noqa: E402
from batchlib.kubo_client import KuboClient  # noqa: E402
from batchlib.platform_client import InMemoryTokenStore, PlatformClient  # noqa: E402
from simulators._http import ServerProcess  # noqa: E402
from simulators.account_platform import PlatformSimulator  # noqa: E402

Request = tuple[str, str, dict[str, str]]  # method, path with query, headers


async def _measure(send: Callable[[int], Awaitable[None]], requests: int, concurrency: int) -> float:
    """CPU ms per request of ``requests`` calls of ``send(i)``, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await send(i)

    await asyncio.gather(*(one(i) for i in range(min(requests, 200))))  # warm-up: connections, caches
    cpu = time.process_time()
    await asyncio.gather(*(one(i) for i in range(requests)))
    return (time.process_time() - cpu) / requests * 1000


def _httpx_send(client: httpx.AsyncClient, calls: list[Request]) -> Callable[[int], Awaitable[None]]:
    async def send(i: int) -> None:
        method, path, headers = calls[i % len(calls)]
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 200, response.status_code
        json.loads(response.content)

    return send


def _wire_send(wire: AiohttpWire, calls: list[Request]) -> Callable[[int], Awaitable[None]]:
    async def send(i: int) -> None:
        method, path, headers = calls[i % len(calls)]
        reply = await wire.send(method, path, headers, None)
        assert not isinstance(reply, str) and reply.status == 200 and reply.body is not None, reply
        json.loads(reply.body)

    return send


async def _layers(base: str, calls: list[Request], requests: int, concurrency: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base, limits=httpx.Limits(max_connections=concurrency)) as client:
        out["httpx.AsyncClient"] = await _measure(_httpx_send(client, calls), requests, concurrency)
    wire = AiohttpWire(base, Limits(max_connections=concurrency))
    try:
        out["aiohttp (AiohttpWire)"] = await _measure(_wire_send(wire, calls), requests, concurrency)
    finally:
        await wire.aclose()
    return out


async def _platform(url: str, tokens: dict[int, str], requests: int, concurrency: int) -> dict[str, float]:
    calls = [("GET", "/v1/me", {"Authorization": f"Bearer {t}"}) for t in tokens.values()]
    out = await _layers(url, calls, requests, concurrency)
    store = InMemoryTokenStore()
    for account_id, token in tokens.items():
        store.put(account_id, token, "unused")
    ids = list(tokens)
    async with PlatformClient(url, store, max_connections=concurrency) as client:

        async def get_me(i: int) -> None:
            await client.get_me(ids[i % len(ids)])

        out["PlatformClient.get_me"] = await _measure(get_me, requests, concurrency)
    return out


async def _kubo(url: str, requests: int, concurrency: int) -> dict[str, float]:
    async with KuboClient(url, max_connections=concurrency) as kubo:
        cids = [pin.cid for pin in await kubo.list_pins()]
        calls = [("POST", f"/api/v0/files/stat?arg=/ipfs/{cid}&offline=true", {}) for cid in cids]
        out = await _layers(url, calls, requests, concurrency)

        async def stat(i: int) -> None:
            await kubo.stat(cids[i % len(cids)])

        out["KuboClient.stat"] = await _measure(stat, requests, concurrency)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20)
    args = parser.parse_args()

    with PlatformSimulator(subprocess=True, latency_ms=args.latency_ms) as sim:
        sim.seed({7: 500})
        tokens = {i: a["access_token"] for i, a in enumerate(sim.accounts(7), start=1)}
        platform = asyncio.run(_platform(sim.url, tokens, args.requests, args.concurrency))
    kubo_server = ServerProcess("simulators.kubo", ["--pins", "500", "--latency-ms", str(args.latency_ms),
                                                    "--log-level", "warning"])
    try:
        kubo = asyncio.run(_kubo(kubo_server.start(), args.requests, args.concurrency))
    finally:
        kubo_server.stop()

    print(f"client CPU per request, {args.requests} requests, {args.concurrency} at a time, "
          f"simulator latency {args.latency_ms:g} ms")
    for name, figures in (("platform GET /v1/me", platform), ("Kubo files/stat", kubo)):
        for layer, ms in figures.items():
            print(f"  {name:22} {layer:32} {ms:.3f} ms")


if __name__ == "__main__":
    main()
