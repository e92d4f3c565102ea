"""The Kubo simulator over loopback, spoken to with a plain httpx client (no KuboClient)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from simulators._http import ServerProcess
from simulators.kubo import KuboSimulator, make_cid


@pytest.fixture
def kubo() -> Iterator[KuboSimulator]:
    with KuboSimulator(pins=50, seed=7) as sim:
        yield sim


@pytest.fixture
def http(kubo: KuboSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kubo.url, timeout=5) as client:
        yield client


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def test_cids_are_deterministic_cidv1_dag_pb_sha256() -> None:
    cid = make_cid(1, 0)
    assert cid == make_cid(1, 0) != make_cid(2, 0) != make_cid(1, 1)
    assert cid.startswith("bafybei") and len(cid) == 59
    raw = base64.b32decode(cid[1:].upper() + "=" * (-len(cid[1:]) % 8))
    assert raw[:4] == bytes([0x01, 0x70, 0x12, 0x20]) and len(raw) == 36


def test_pin_ls_stream_is_chunked_ndjson(kubo: KuboSimulator, http: httpx.Client) -> None:
    response = http.post("/api/v0/pin/ls", params={"type": "recursive", "stream": "true"})
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-chunked-output"] == "1"
    lines = ndjson(response)
    assert lines[0] == {"Cid": kubo.pins()[0], "Type": "recursive"}
    assert [line["Cid"] for line in lines] == kubo.pins()


def test_pin_ls_without_stream_gives_keys_object(kubo: KuboSimulator, http: httpx.Client) -> None:
    body = http.post("/api/v0/pin/ls", params={"type": "recursive"}).json()
    assert list(body) == ["Keys"]
    assert list(body["Keys"]) == kubo.pins()
    assert set(map(json.dumps, body["Keys"].values())) == {'{"Type": "recursive"}'}


def test_pin_ls_type_filter_and_bad_type(http: httpx.Client) -> None:
    assert http.post("/api/v0/pin/ls", params={"type": "direct"}).json() == {"Keys": {}}
    bad = http.post("/api/v0/pin/ls", params={"type": "nope"})
    assert bad.status_code == 400 and bad.json()["Code"] == 1 and bad.json()["Type"] == "error"


def test_get_is_405_and_unknown_call_is_404(http: httpx.Client) -> None:
    for path in ("/api/v0/pin/ls", "/api/v0/version", "/api/v0/files/stat"):
        response = http.get(path)
        assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert http.post("/api/v0/nope").status_code == 404


def test_version(http: httpx.Client) -> None:
    assert set(http.post("/api/v0/version").json()) == {"Version", "Commit", "Repo", "System", "Golang"}


def test_files_stat_shape_and_errors(kubo: KuboSimulator, http: httpx.Client) -> None:
    cid = kubo.pins()[0]
    body = http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{cid}"}).json()
    assert body["Hash"] == cid and body["Type"] == "file"
    assert body["CumulativeSize"] > body["Size"] > 0 and body["Blocks"] >= 1
    assert body == http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{cid}"}).json()  # stable

    missing = http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{make_cid(99, 0)}"})
    assert missing.status_code == 500
    assert missing.json() == {
        "Message": f"block was not found locally (offline): ipld: could not find {make_cid(99, 0)}",
        "Code": 0,
        "Type": "error",
    }
    assert http.post("/api/v0/files/stat", params={"arg": "/ipfs/zzz"}).json()["Message"].startswith("invalid path")
    assert http.post("/api/v0/files/stat").status_code == 400


def test_vanish_fraction_keeps_pins_listed_but_unstatable(kubo: KuboSimulator, http: httpx.Client) -> None:
    kubo.configure(vanish_fraction=0.3)
    gone = kubo.vanished()
    assert 5 <= len(gone) <= 25 and set(gone) <= set(kubo.pins())
    assert len(ndjson(http.post("/api/v0/pin/ls", params={"stream": "true"}))) == 50
    for cid in kubo.pins():
        status = http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{cid}"}).status_code
        assert status == (500 if cid in gone else 200)


def test_stat_fail_first_and_error_rate(kubo: KuboSimulator, http: httpx.Client) -> None:
    kubo.configure(stat_fail_first=2)
    cid = kubo.pins()[0]
    statuses = [http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{cid}"}).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    kubo.configure(stat_fail_first=0, error_rate=1.0)
    assert http.post("/api/v0/files/stat", params={"arg": f"/ipfs/{cid}"}).status_code == 500
    assert kubo.calls()["stat_by_cid"][cid] == 4


def test_die_after_lines_breaks_the_chunked_body(kubo: KuboSimulator, http: httpx.Client) -> None:
    kubo.configure(die_after_lines=10)
    with http.stream("POST", "/api/v0/pin/ls", params={"stream": "true"}) as response:
        assert response.status_code == 200
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_bytes():
                received += chunk
    assert received.count(b"\n") == 10 and not received.endswith(b"\n")  # ten lines and half a line
    assert kubo.stats()["streams"]["died"] == 1


def test_stream_error_after_lines_ends_with_a_kubo_error_object(kubo: KuboSimulator, http: httpx.Client) -> None:
    kubo.configure(stream_error_after_lines=3)
    lines = ndjson(http.post("/api/v0/pin/ls", params={"stream": "true"}))
    assert len(lines) == 4 and lines[-1]["Type"] == "error" and "Message" in lines[-1]


def test_control_endpoints(kubo: KuboSimulator, http: httpx.Client) -> None:
    assert http.post("/_sim/config", json={"latency_ms": 1, "vanish_fraction": 0.5}).json()["latency_ms"] == 1.0
    assert http.post("/_sim/config", json={"nope": 1}).status_code == 400
    assert http.post("/_sim/config", json={"error_rate": 2}).status_code == 400

    first = kubo.pins()[:2]
    edited = http.post("/_sim/pins", json={"add": 3, "remove": first}).json()
    assert edited["removed"] == 2 and len(edited["added"]) == 3 and edited["pins"] == 51
    assert kubo.pins()[-3:] == edited["added"] and not set(first) & set(kubo.pins())
    assert edited["added"][0] == make_cid(7, 50)  # indexes continue after the initial pins

    http.post("/api/v0/version")
    assert http.get("/_sim/calls").json()["by_endpoint"] == {"version": 1}
    stats = http.get("/_sim/stats").json()
    assert stats["pins"] == 51 and stats["max_in_flight"] == 1 and stats["config"]["vanish_fraction"] == 0.5

    assert http.post("/_sim/reset").json() == {"ok": True}
    assert kubo.pins() == [make_cid(7, i) for i in range(50)]
    assert kubo.calls()["total"] == 0 and kubo.stats()["config"]["latency_ms"] == 0.0


def test_latency_applies_per_call_and_calls_overlap(kubo: KuboSimulator) -> None:
    kubo.configure(latency_ms=100)

    def call(_: int) -> int:
        return httpx.post(f"{kubo.url}/api/v0/version", timeout=5).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        assert set(pool.map(call, range(10))) == {200}
    elapsed = time.perf_counter() - started
    assert 0.1 <= elapsed < 0.9
    assert kubo.stats()["max_in_flight"] >= 5


def test_cli_serves_on_a_free_port() -> None:
    server = ServerProcess("simulators.kubo", ["--pins", "3", "--seed", "2", "--log-level", "warning"])
    url = server.start()
    try:
        body = httpx.post(f"{url}/api/v0/pin/ls", params={"type": "recursive"}, timeout=5).json()
        assert list(body["Keys"]) == [make_cid(2, i) for i in range(3)]
    finally:
        server.stop()
