"""KuboClient over a scripted wire (tests/support/wire.py): edge cases no simulator knob produces.

The same client against the Kubo simulator, over AiohttpWire: tests/batchlib/test_kubo_client.py.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

import pytest

from batchcore.errors import BadKuboResponse, KuboRateLimited, KuboRejected, KuboUnavailable
from batchcore.settings import Settings
from batchlib.backoff import RetryPolicy
from batchlib.http_wire import Reply, StreamBroken
from batchlib.kubo_client import KuboClient, PinNotFound, PinRef, PinStat
from simulators.kubo import make_cid
from tests.support.wire import Chunks, Handler, ScriptedWire, Sent, reply, sequence

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

CID = make_cid(1, 0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


BROKEN = StreamBroken("connection error (truncated or undecodable body)")


def mock(handler: Handler, max_retries: int = 3, **options: Any) -> tuple[KuboClient, ScriptedWire]:
    wire = ScriptedWire(handler, max_body_bytes=options.get("max_body_bytes", 1_000_000))
    return KuboClient("http://kubo.test", wire=wire, retry=RetryPolicy(max_retries, base=0), **options), wire


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


def test_each_tenant_gets_its_node_from_the_settings() -> None:
    settings = Settings(kubo_url="http://default:5001", kubo_nodes={"7": "http://node7:5001"})
    assert settings.kubo_url_for(7) == "http://node7:5001"
    assert settings.kubo_url_for(8) == "http://default:5001"
    assert settings.kubo_url_for(None) == "http://default:5001"
    assert KuboClient.from_settings(settings, 7)._wire._base == "http://node7:5001"  # type: ignore[attr-defined]  # noqa: SLF001
