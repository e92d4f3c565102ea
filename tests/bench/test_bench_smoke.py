"""The benchmark keeps working: a small run (N = 200) end to end. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_smoke_run_prints_every_figure(prefect_server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--items", "200", "--concurrency", "20", "--latency-ms", "5",
         "--prefect-api", prefect_server.api_url, "--prefect-db", prefect_server.db, "--json", str(out)],
        cwd=REPO, env={**os.environ, **prefect_server.env}, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for label in ("efficiency:", "CPU/item:", "mirror:", "memory:", "prefect:"):
        assert label in run.stdout
    (row,) = json.loads(out.read_text())
    assert (row["status"], row["success"], row["items"]) == ("completed", 200, 200)
    assert row["task_runs"] >= 200  # one task run per account below the chunk threshold
    assert row["db_round_trips"] > 0 and row["flow_peak_rss_mib"] > 0
    assert 0 < row["flow_efficiency"] and 0 < row["baseline_efficiency"]
