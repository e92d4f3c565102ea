"""KuboClient against the Kubo simulator over loopback, on the production wire (AiohttpWire).

Edge cases no simulator knob produces run over a scripted wire: tests/unit/test_kubo_client.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from batchcore.errors import KuboRejected, KuboUnavailable, PlatformError
from batchcore.settings import Settings
from batchlib.backoff import RetryPolicy
from batchlib.kubo_client import KuboClient, PinNotFound, PinRef, PinStat
from simulators.kubo import KuboSimulator, make_cid

pytestmark = pytest.mark.anyio

CID = make_cid(1, 0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def kubo() -> Iterator[KuboSimulator]:
    with KuboSimulator(pins=10_000, seed=1) as sim:
        yield sim


def client_for(url: str, max_retries: int = 3, **options: object) -> KuboClient:
    return KuboClient(url, retry=RetryPolicy(max_retries, base=0), **options)  # type: ignore[arg-type]


def pool_is_idle(client: KuboClient) -> bool:
    return client._wire.idle  # type: ignore[attr-defined]  # noqa: SLF001 - white-box check of the pool


# -- against the simulator -------------------------------------------------------------------
async def test_streams_10000_pins_quickly(kubo: KuboSimulator) -> None:
    started = time.perf_counter()
    async with client_for(kubo.url) as client:
        pins = await client.list_pins()
    elapsed = time.perf_counter() - started
    assert [pin.cid for pin in pins] == kubo.pins()
    assert {pin.type for pin in pins} == {"recursive"}
    assert elapsed < 3, f"listing 10,000 pins took {elapsed:.2f}s"
    assert kubo.calls()["by_endpoint"] == {"pin/ls": 1}
    assert kubo.stats()["streams"] == {"started": 1, "completed": 1}


async def test_pins_arrive_before_the_stream_ends(kubo: KuboSimulator) -> None:
    kubo.configure(stream_delay_ms=2)  # the whole list would take 20 s
    started = time.perf_counter()
    first: list[PinRef] = []
    async with client_for(kubo.url) as client:
        async with aclosing(client.iter_pins()) as pins:
            async for pin in pins:
                first.append(pin)
                if len(first) == 5:
                    break
            assert not pool_is_idle(client)
        assert pool_is_idle(client)  # the abandoned stream gave its connection slot back
    assert [pin.cid for pin in first] == kubo.pins()[:5]
    assert time.perf_counter() - started < 2


async def test_stat_returns_sizes(kubo: KuboSimulator) -> None:
    cid = kubo.pins()[0]
    async with client_for(kubo.url) as client:
        stat = await client.stat(cid)
        assert await client.version() == "0.39.0"
    assert isinstance(stat, PinStat) and stat.cid == cid and stat.type == "file"
    assert stat.cumulative_size > stat.size > 0 and stat.blocks >= 1


async def test_vanished_pins_are_not_found_without_retries(kubo: KuboSimulator) -> None:
    kubo.configure(pins=60, vanish_fraction=0.25)
    async with client_for(kubo.url, max_retries=3) as client:
        listed = await client.list_pins()
        results = await asyncio.gather(*(client.stat(pin.cid) for pin in listed), return_exceptions=True)
    missing = {r.cid for r in results if isinstance(r, PinNotFound)}
    assert len(listed) == 60 and missing == set(kubo.vanished()) and 5 <= len(missing) <= 30
    assert all(isinstance(r, PinStat) for r in results if not isinstance(r, PinNotFound))
    error = next(r for r in results if isinstance(r, PinNotFound))
    assert isinstance(error, KuboRejected) and error.reason.startswith("not pinned")
    assert not isinstance(error, PlatformError)  # a Kubo failure is never taken for a platform one
    stat_calls = kubo.calls()["stat_by_cid"]
    assert all(stat_calls[cid] == 1 for cid in missing)  # one call each: never retried


async def test_pin_removed_between_list_and_stat_is_not_found(kubo: KuboSimulator) -> None:
    async with client_for(kubo.url) as client:
        pins = await client.list_pins()
        kubo.remove([pins[3].cid])
        with pytest.raises(PinNotFound):
            await client.stat(pins[3].cid)
        await client.stat(pins[4].cid)


async def test_stream_death_mid_list_raises_unavailable(kubo: KuboSimulator) -> None:
    kubo.configure(die_after_lines=1234)
    seen: list[PinRef] = []
    async with client_for(kubo.url) as client:
        with pytest.raises(KuboUnavailable, match="kubo stream ended early after 1234 pins"):
            async for pin in client.iter_pins():
                seen.append(pin)
        assert pool_is_idle(client)
    assert len(seen) == 1234  # the half line after the cut is never yielded


async def test_stream_death_after_the_last_line_still_raises(kubo: KuboSimulator) -> None:
    kubo.configure(pins=100, die_after_lines=100)  # every pin arrived, but no clean end
    async with client_for(kubo.url) as client:
        with pytest.raises(KuboUnavailable, match="ended early after 100 pins"):
            await client.list_pins()


async def test_error_object_in_the_stream_raises_unavailable(kubo: KuboSimulator) -> None:
    kubo.configure(stream_error_after_lines=10)
    async with client_for(kubo.url) as client:
        with pytest.raises(KuboUnavailable, match="after 10 pins: simulated failure"):
            await client.list_pins()


async def test_stat_5xx_is_recovered_within_the_retry_budget(kubo: KuboSimulator) -> None:
    kubo.configure(stat_fail_first=3)
    cid = kubo.pins()[0]
    async with client_for(kubo.url, max_retries=3) as client:
        assert (await client.stat(cid)).cid == cid
    assert kubo.calls()["stat_by_cid"][cid] == 4


async def test_stat_5xx_past_the_budget_is_unavailable(kubo: KuboSimulator) -> None:
    kubo.configure(stat_fail_first=10)
    cid = kubo.pins()[0]
    async with client_for(kubo.url, max_retries=2) as client:
        with pytest.raises(KuboUnavailable, match="after 3 attempt") as caught:
            await client.stat(cid)
    assert caught.value.status_code == 500
    assert kubo.calls()["stat_by_cid"][cid] == 3  # 1 + max_retries, never more


async def test_node_down_is_unavailable() -> None:
    with KuboSimulator(pins=1) as sim:
        url = sim.url
    async with client_for(url, max_retries=1) as client:  # nothing listens there any more
        with pytest.raises(KuboUnavailable, match=r"connection error \(ClientConnectorError\)"):
            await client.stat(CID)
        with pytest.raises(KuboUnavailable):
            await client.list_pins()


async def test_from_settings(kubo: KuboSimulator) -> None:
    settings = Settings(kubo_url=kubo.url, http_max_retries=0)
    async with KuboClient.from_settings(settings) as client:
        assert len(await client.list_pins()) == 10_000
