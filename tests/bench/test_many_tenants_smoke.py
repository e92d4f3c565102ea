"""The many-tenants benchmark keeps working, cold and through the warm engine. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *extra: str) -> tuple[str, list[dict]]:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # it starts its own server
    run = subprocess.run(
        [sys.executable, "bench/many_tenants.py", "--tenants", "2", "--items", "20", "--latency-ms", "5",
         "--json", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout, json.loads(out.read_text())


def _check_round(row: dict) -> None:
    assert (row["completed"], row["runs"]) == (2, 2)  # both batches completed, every item done
    for run in row["per_run"]:
        assert run["state"] == "COMPLETED" and run["batch"][0] == "completed" and run["batch"][1] == 20
        assert 0 < run["cpu_start_s"] <= run["cpu_total_s"]
        assert run["process_start_s"] < run["first_item_s"] <= run["last_item_s"] <= run["end_s"]
    assert row["makespan_s"] >= max(r["last_item_s"] for r in row["per_run"])
    assert row["worker_peak_rss_mib"] > 0 and row["cpu_per_item_ms"] > 0


@pytest.mark.slow
def test_many_tenants_cold_prints_every_figure(tmp_path: Path) -> None:
    stdout, (row,) = _run(tmp_path)
    for label in ("makespan:", "starts:", "CPU/start:", "CPU/item:", "memory:"):
        assert label in stdout
    _check_round(row)
    assert all(run["processes"] == 1 for run in row["per_run"])  # python -m prefect.engine under the worker


@pytest.mark.slow
def test_many_tenants_through_the_warm_engine(tmp_path: Path) -> None:
    _, rows = _run(tmp_path, "--warm-engine", "--rounds", "2")
    for row in rows:
        _check_round(row)
        # the worker's command (the client) and the run forked by the warm engine: never a cold start
        assert all(run["processes"] == 2 for run in row["per_run"]), row["per_run"]
