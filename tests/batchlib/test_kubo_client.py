"""KuboClient against the Kubo simulator over loopback, and against MockTransport for edge cases."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import httpx
import pytest

from batchlib.errors import BadKuboResponse, KuboRateLimited, KuboRejected, KuboUnavailable, PlatformError
from batchlib.kubo_client import KuboClient, PinNotFound, PinRef, PinStat
from batchlib.settings import Settings
from simulators.kubo import KuboSimulator, make_cid

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

CID = make_cid(1, 0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def kubo() -> Iterator[KuboSimulator]:
    with KuboSimulator(pins=10_000, seed=1) as sim:
        yield sim


def client_for(url: str, **options: object) -> KuboClient:
    return KuboClient(url, backoff_base=0, **options)  # type: ignore[arg-type]


def pool_is_idle(client: KuboClient) -> bool:
    return client._http._transport.idle  # noqa: SLF001 - white-box check of the sharded pool


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
        with pytest.raises(KuboUnavailable, match="ConnectError"):
            await client.stat(CID)
        with pytest.raises(KuboUnavailable):
            await client.list_pins()


# -- MockTransport edge cases ----------------------------------------------------------------
class BrokenStream(httpx.AsyncByteStream):
    """Yields some chunks, then fails like an incomplete chunked body."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def mock(handler: Callable[[httpx.Request], httpx.Response], **options: object) -> KuboClient:
    transport = httpx.MockTransport(handler)
    return KuboClient("http://kubo.test", transport=transport, backoff_base=0, **options)  # type: ignore[arg-type]


def pins_body(*lines: bytes) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, content=b"".join(lines))


async def test_mock_request_shape() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/v0/files/stat":
            return httpx.Response(200, json={"Hash": CID, "Size": 5, "CumulativeSize": 19, "Blocks": 0, "Type": "file"})
        return httpx.Response(200, content=b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode())

    async with mock(handler) as client:
        assert await client.list_pins(type="all") == [PinRef(CID, "recursive")]
        assert await client.stat(CID) == PinStat(CID, 5, 19, 0, "file")
    assert [r.method for r in seen] == ["POST", "POST"]
    assert dict(seen[0].url.params) == {"type": "all", "stream": "true"}
    assert dict(seen[1].url.params) == {"arg": f"/ipfs/{CID}", "offline": "true"}


async def test_mock_garbage_line_is_bad_response() -> None:
    handler = pins_body(b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode(), b"<html>oops</html>\n")
    async with mock(handler) as client:
        with pytest.raises(BadKuboResponse, match="line 2 is not JSON"):
            await client.list_pins()
    async with mock(pins_body(b'{"Hash":"x"}\n')) as client:
        with pytest.raises(BadKuboResponse, match="not a pin"):
            await client.list_pins()


async def test_mock_overlong_line_is_bad_response() -> None:
    handler = pins_body(b'{"Cid":"' + b"b" * 5000)  # never ends
    async with mock(handler, max_line_bytes=1024) as client:
        with pytest.raises(BadKuboResponse, match="exceeds 1024 bytes"):
            await client.list_pins()


async def test_mock_non_stream_shape_and_missing_final_newline() -> None:
    keys = b'{"Keys":{"%s":{"Type":"recursive"}}}' % CID.encode()
    async with mock(pins_body(keys)) as client:
        assert await client.list_pins() == [PinRef(CID, "recursive")]


async def test_mock_incomplete_chunked_body_is_unavailable_and_not_retried() -> None:
    line = b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode()
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, stream=BrokenStream([line, line, b'{"Cid":"ba']))

    async with mock(handler, max_retries=3) as client:
        with pytest.raises(KuboUnavailable, match="ended early after 2 pins: RemoteProtocolError"):
            await client.list_pins()
    assert len(requests) == 1  # lines were already yielded: the caller decides to list again


async def test_mock_stream_open_is_retried() -> None:
    line = b'{"Cid":"%s","Type":"direct"}\n' % CID.encode()
    answers = iter([httpx.Response(503, text="busy"), httpx.Response(200, content=line)])
    async with mock(lambda request: next(answers)) as client:
        assert await client.list_pins() == [PinRef(CID, "direct")]


async def test_mock_stat_timeouts_are_retried() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(200, json={"Hash": CID, "Size": 1, "CumulativeSize": 9, "Blocks": 1, "Type": "file"})

    async with mock(handler, max_retries=3) as client:
        assert (await client.stat(CID)).size == 1
    assert calls == 3


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"Message": "invalid argument", "Code": 1, "Type": "error"}, KuboRejected),
        (405, "405 - Method Not Allowed", KuboRejected),
        (500, {"Message": 'invalid path "/ipfs/x": invalid cid', "Code": 0, "Type": "error"}, KuboRejected),
        (500, {"Message": f"ipld: could not find {CID}", "Code": 0, "Type": "error"}, PinNotFound),
    ],
)
async def test_mock_terminal_answers_are_not_retried(status: int, body: object, error: type[Exception]) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=str(body))

    async with mock(handler, max_retries=3) as client:
        with pytest.raises(error) as caught:
            await client.stat(CID)
    assert calls == 1 and caught.value.status_code == status  # type: ignore[attr-defined]


async def test_mock_429_past_the_budget_is_rate_limited() -> None:
    async with mock(lambda request: httpx.Response(429, text="slow down"), max_retries=2) as client:
        with pytest.raises(KuboRateLimited, match="after 3 attempt"):
            await client.stat(CID)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (b'{"Hash": "x", "Size": "12"}', "unexpected answer"),
        (b'{"Hash":"' + b"x" * 5000 + b'"}', "exceeds 1024 bytes"),
    ],
)
async def test_mock_unreadable_stat_is_bad_response(content: bytes, match: str) -> None:
    async with mock(lambda request: httpx.Response(200, content=content), max_body_bytes=1024) as client:
        with pytest.raises(BadKuboResponse, match=match):
            await client.stat(CID)


async def test_mock_bad_cid_makes_no_call() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    async with mock(handler) as client:
        with pytest.raises(KuboRejected, match="is not a CID"):
            await client.stat("../../etc/passwd")


async def test_mock_429_waits_for_retry_after() -> None:
    ok = httpx.Response(200, json={"Version": "0.39.0"})
    answers = iter([httpx.Response(429, headers={"Retry-After": "0.2"}), ok])
    started = time.perf_counter()
    async with mock(lambda request: next(answers)) as client:
        assert await client.version() == "0.39.0"
    assert time.perf_counter() - started >= 0.2


async def test_from_settings(kubo: KuboSimulator) -> None:
    settings = Settings(kubo_url=kubo.url, http_max_retries=0)
    async with KuboClient.from_settings(settings) as client:
        assert len(await client.list_pins()) == 10_000


def test_each_tenant_gets_its_node_from_the_settings() -> None:
    settings = Settings(kubo_url="http://default:5001", kubo_nodes={"7": "http://node7:5001"})
    assert settings.kubo_url_for(7) == "http://node7:5001"
    assert settings.kubo_url_for(8) == "http://default:5001"
    assert settings.kubo_url_for(None) == "http://default:5001"
    assert KuboClient.from_settings(settings, 7)._http.base_url == "http://node7:5001"  # noqa: SLF001
