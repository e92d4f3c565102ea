"""A real ``prefect server start`` with its own PREFECT_HOME and PostgreSQL database.

Used by the test session and by ``bench/run.py``::

    with PrefectServer() as server:          # PrefectServer().start() / .stop()
        subprocess.run([...], env=server.env)  # PREFECT_API_URL, PREFECT_API_AUTH_STRING, PREFECT_HOME

The API is behind Prefect's basic authentication, as in production: the server starts with
a random ``PREFECT_SERVER_API_AUTH_STRING`` of its own and ``server.env`` gives clients the
matching ``PREFECT_API_AUTH_STRING`` (``PrefectServer(auth=False)`` for an open API).

Prefect's ephemeral/test-harness API stores everything in SQLite; under a few hundred task
runs a second it serialises on "database is locked" (flow runs then start seconds late).
The tests use the production-like backend instead: PostgreSQL, as production should.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

__all__ = ["PrefectServer", "free_port"]

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg(sql: str) -> None:
    subprocess.run(["psql", PG_URL, "-q", "-c", sql], check=True, capture_output=True)


class PrefectServer:
    def __init__(self, *, auth: bool = True) -> None:
        # "user:password", as Prefect expects it; random per server, never written to a file
        self.auth_string = f"batch:{secrets.token_urlsafe(24)}" if auth else None
        self.home = Path(tempfile.mkdtemp(prefix="prefect-home-"))
        self.port = free_port()
        self.db = f"prefect_{uuid.uuid4().hex[:10]}"
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client process (CLI, worker, flow run) of this server."""
        env = {**os.environ, "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if self.auth_string is not None:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def start(self, timeout: float = 90) -> "PrefectServer":
        _pg(f'CREATE DATABASE "{self.db}"')
        pg_host = PG_URL.split("://", 1)[1].rsplit("/", 1)[0]
        env = {
            **self.env,
            "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{pg_host}/{self.db}",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_API_URL": self.api_url,  # the UI in a browser calls this port, not 4200
        }
        env.pop("PREFECT_API_URL")
        if self.auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        self._log = open(self.home / "server.log", "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(self.home / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("prefect server did not become healthy")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, 15)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait()
        self._proc = None
        try:
            _pg(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        except subprocess.CalledProcessError:
            pass

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
