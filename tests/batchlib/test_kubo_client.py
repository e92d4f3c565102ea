"""KuboClient against the Kubo simulator over loopback (the production wire), and over a scripted
wire (tests/support/wire.py) for edge cases no simulator knob produces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qsl

import pytest

from batchlib.errors import BadKuboResponse, KuboRateLimited, KuboRejected, KuboUnavailable, PlatformError
from batchlib.http_wire import Reply, StreamBroken
from batchlib.kubo_client import KuboClient, PinNotFound, PinRef, PinStat
from batchlib.settings import Settings
from simulators.kubo import KuboSimulator, make_cid
from tests.support.wire import Chunks, Handler, ScriptedWire, Sent, reply, sequence

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


# -- edge cases over a scripted wire -----------------------------------------------------------
BROKEN = StreamBroken("connection error (truncated or undecodable body)")


def mock(handler: Handler, **options: Any) -> tuple[KuboClient, ScriptedWire]:
    wire = ScriptedWire(handler, max_body_bytes=options.get("max_body_bytes", 1_000_000))
    return KuboClient("http://kubo.test", wire=wire, backoff_base=0, **options), wire


def pins_body(*lines: bytes) -> Handler:
    return lambda sent: Chunks(200, [b"".join(lines)])


def query(sent: Sent) -> dict[str, str]:
    path, _, qs = sent.path.partition("?")
    return dict(parse_qsl(qs))


async def test_mock_request_shape() -> None:
    def handler(sent: Sent) -> Reply | Chunks:
        if sent.path.startswith("/api/v0/files/stat?"):
            return reply(200, json={"Hash": CID, "Size": 5, "CumulativeSize": 19, "Blocks": 0, "Type": "file"})
        return Chunks(200, [b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode()])

    client, wire = mock(handler)
    async with client:
        assert await client.list_pins(type="all") == [PinRef(CID, "recursive")]
        assert await client.stat(CID) == PinStat(CID, 5, 19, 0, "file")
    assert [(s.method, s.path.partition("?")[0]) for s in wire.sent] == [
        ("POST", "/api/v0/pin/ls"), ("POST", "/api/v0/files/stat")
    ]
    assert query(wire.sent[0]) == {"type": "all", "stream": "true"}
    assert query(wire.sent[1]) == {"arg": f"/ipfs/{CID}", "offline": "true"}
    assert wire.closed


async def test_mock_garbage_line_is_bad_response() -> None:
    client, _ = mock(pins_body(b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode(), b"<html>oops</html>\n"))
    async with client:
        with pytest.raises(BadKuboResponse, match="line 2 is not JSON"):
            await client.list_pins()
    client, _ = mock(pins_body(b'{"Hash":"x"}\n'))
    async with client:
        with pytest.raises(BadKuboResponse, match="not a pin"):
            await client.list_pins()


async def test_mock_overlong_line_is_bad_response() -> None:
    client, _ = mock(pins_body(b'{"Cid":"' + b"b" * 5000), max_line_bytes=1024)  # never ends
    async with client:
        with pytest.raises(BadKuboResponse, match="exceeds 1024 bytes"):
            await client.list_pins()


async def test_mock_non_stream_shape_and_missing_final_newline() -> None:
    client, _ = mock(pins_body(b'{"Keys":{"%s":{"Type":"recursive"}}}' % CID.encode()))
    async with client:
        assert await client.list_pins() == [PinRef(CID, "recursive")]


async def test_mock_incomplete_chunked_body_is_unavailable_and_not_retried() -> None:
    line = b'{"Cid":"%s","Type":"recursive"}\n' % CID.encode()
    answer = Chunks(200, [line, line, b'{"Cid":"ba', BROKEN])
    client, wire = mock(lambda sent: answer, max_retries=3)
    async with client:
        with pytest.raises(KuboUnavailable, match=r"ended early after 2 pins: connection error \(truncated"):
            await client.list_pins()
    assert len(wire.sent) == 1  # lines were already yielded: the caller decides to list again
    assert answer.closed  # the stream's connection was given up


async def test_mock_stream_open_is_retried() -> None:
    line = b'{"Cid":"%s","Type":"direct"}\n' % CID.encode()
    client, wire = mock(sequence(reply(503, text="busy"), "connection error (ClientOSError)", Chunks(200, [line])))
    async with client:
        assert await client.list_pins() == [PinRef(CID, "direct")]
    assert len(wire.sent) == 3


async def test_mock_stat_timeouts_are_retried() -> None:
    ok = reply(200, json={"Hash": CID, "Size": 1, "CumulativeSize": 9, "Blocks": 1, "Type": "file"})
    client, wire = mock(sequence("timeout (ReadTimeout)", "timeout (BodyTimeout)", ok), max_retries=3)
    async with client:
        assert (await client.stat(CID)).size == 1
    assert len(wire.sent) == 3


async def test_mock_stat_timeouts_past_the_budget_are_unavailable() -> None:
    client, wire = mock(sequence("timeout (ReadTimeout)"), max_retries=2)
    async with client:
        with pytest.raises(KuboUnavailable, match=r"after 3 attempt\(s\): timeout \(ReadTimeout\)"):
            await client.stat(CID)
    assert len(wire.sent) == 3


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
    answer = reply(status, json=body) if isinstance(body, dict) else reply(status, text=str(body))
    client, wire = mock(lambda sent: answer, max_retries=3)
    async with client:
        with pytest.raises(error) as caught:
            await client.stat(CID)
    assert len(wire.sent) == 1 and caught.value.status_code == status  # type: ignore[attr-defined]


async def test_mock_429_past_the_budget_is_rate_limited() -> None:
    client, _ = mock(lambda sent: reply(429, text="slow down"), max_retries=2)
    async with client:
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
    client, _ = mock(lambda sent: reply(200, content=content), max_body_bytes=1024)
    async with client:
        with pytest.raises(BadKuboResponse, match=match):
            await client.stat(CID)


async def test_mock_bad_cid_makes_no_call() -> None:
    client, wire = mock(lambda sent: reply(200, json={}))
    async with client:
        with pytest.raises(KuboRejected, match="is not a CID"):
            await client.stat("../../etc/passwd")
    assert wire.sent == []


async def test_mock_429_waits_for_retry_after() -> None:
    client, _ = mock(sequence(reply(429, headers={"Retry-After": "0.2"}), reply(200, json={"Version": "0.39.0"})))
    started = time.perf_counter()
    async with client:
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
    assert KuboClient.from_settings(settings, 7)._wire._base == "http://node7:5001"  # type: ignore[attr-defined]  # noqa: SLF001
