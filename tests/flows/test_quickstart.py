"""The README path: the quick start with --keep-running, then "Running a batch" as written.

A fresh working directory, the embedded defaults (SQLite mirror, Prefect's ephemeral API), no
services: exactly what a newcomer has.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def newcomer_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCH_", "PREFECT_"))}
    env.update(
        PYTHONPATH=str(REPO),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        # The shared 2-core test machine can take over a minute to start an ephemeral API.
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="240",
    )
    return env


def test_readme_commands_run_after_the_quick_start(tmp_path: Path, newcomer_env: dict[str, str]) -> None:
    if not _port_free(8900):
        pytest.skip("port 8900 (the default BATCH_PLATFORM_URL) is in use")
    quickstart = subprocess.Popen(
        [sys.executable, "-m", "flows.quickstart", "--keep-running", "--accounts", "20"],
        cwd=tmp_path, env=newcomer_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in quickstart.stdout], daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + 480
        while not any(line.startswith("In a second terminal") for line in seen):
            assert time.monotonic() < deadline and quickstart.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        time.sleep(0.5)
        while not lines.empty():
            seen.append(lines.get())
        printed = "".join(seen)
        assert "  python -m flows.account_check --tenant-id 7\n" in printed

        def readme(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=newcomer_env,
                                  capture_output=True, text=True, timeout=480)

        check = readme("flows.account_check", "--tenant-id", "7")
        assert check.returncode == 0, check.stderr[-2000:]
        assert "(account_check, tenant 7) completed: 20/20 processed, 17 succeeded, 3 failed" in check.stdout
        assert "3 item(s) failed:" in check.stdout
        for account_id in (700018, 700019, 700020):
            assert f"  item {account_id}: platform error (HTTP 500); gave up after 4 attempts" in check.stdout
        batch_id = int(check.stdout.split("batch ", 1)[1].split(" ", 1)[0])
        assert f"retry only those: python -m flows.account_check --retry-failed {batch_id}" in check.stdout

        retry = readme("flows.account_check", "--retry-failed", str(batch_id))
        assert retry.returncode == 0, retry.stderr[-2000:]
        assert "(account_check, tenant 7) completed: 3/3 processed, 3 succeeded, 0 failed" in retry.stdout
        assert "failed:" not in retry.stdout

        nickname = readme("flows.nickname_change", "--tenant-id", "7",
                          "--items", '[{"account_id": 700001, "nickname": "Ann"}]')
        assert nickname.returncode == 0, nickname.stderr[-2000:]
        assert "(nickname_change, tenant 7) completed: 1/1 processed, 1 succeeded" in nickname.stdout
    finally:
        quickstart.send_signal(signal.SIGINT)
        try:
            quickstart.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(quickstart.pid, signal.SIGKILL)
            quickstart.wait()
