"""Fault-injection helpers: canary worlds, leak scans, progress triggers, private servers (fixtures: tests/faults/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import redis

from batchlib.seeding import import_accounts
from batchlib.settings import get_settings
from db import get_engine, upgrade
from deployments.local_server import free_port
from simulators.account_platform import PlatformSimulator
from tests.support.batch_env import BatchEnv, configure_env
from tests.support.services import (
    MYSQL_USER,
    REDIS_URL,
    auth_needles,
    prefect_db_dump,
)

REPO = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r"(?:at|rt)_[0-9a-f]{32}")  # tokens the simulator issues on refresh


# -- the world of one fault test --------------------------------------------------------


@dataclass
class FaultEnv(BatchEnv):
    """BatchEnv plus a canary and the tokens ever handed out, to search for leaks."""

    canary: str = ""
    redis_url: str = REDIS_URL
    db_name: str = ""
    tokens: set[str] = field(default_factory=set)

    def seed_canaries(self, tenants: dict[int, int], **kwargs) -> list[int]:
        """Simulator accounts whose tokens all contain the canary, imported into la_alt_account."""
        self.sim.seed(tenants, **kwargs)
        accounts = []
        for account in (a for t in tenants for a in self.sim.accounts(t)):
            account = {**account, "access_token": f"at-{self.canary}-{account['uid']}",
                       "refresh_token": f"rt-{self.canary}-{account['uid']}"}
            accounts.append(account)
        self.sim.register(accounts)
        self.tokens.update(a[k] for a in accounts for k in ("access_token", "refresh_token"))
        return import_accounts(self.engine, accounts)

    def progress(self) -> tuple[int, int]:
        """(processed, total) over every batch of this test."""
        done, total = self.sql("SELECT COALESCE(SUM(processed_count),0), COALESCE(SUM(total_count),0) FROM la_batch_task")[0]
        return int(done), int(total)

    def fence(self, batch_id: int) -> int:
        return int(self.sql("SELECT fence FROM la_batch_run WHERE task_id = :b", b=batch_id)[0].fence)

    def batch_ids(self) -> list[int]:
        return [r.id for r in self.sql("SELECT id FROM la_batch_task ORDER BY id")]

    def details(self, batch_id: int) -> dict[int, tuple]:
        rows = self.sql("SELECT item_id, status, result, error_message, process_time FROM la_batch_task_detail"
                        " WHERE task_id = :b", b=batch_id)
        return {r.item_id: tuple(r[1:]) for r in rows}

    def assert_invariants(self, batch_id: int, *, expect_total: int | None = None) -> None:
        """I1-I3 from the database; I5's Redis half (no lease key left)."""
        self.assert_consistent(batch_id)
        row = self.batch(batch_id)
        assert row["processed_count"] == row["success_count"] + row["failed_count"]  # I3 (no skipped here)
        if expect_total is not None:
            assert row["total_count"] == expect_total  # I1
            assert len(self.details(batch_id)) == expect_total
        assert not redis.Redis.from_url(self.redis_url).keys(f"{self.redis_prefix}*")  # I5: lease gone

    def assert_all_complete(self, states, *, batches: int = 2, items: int = 1000) -> None:
        """Every run completed; ``batches`` batches of ``items`` each, all successes, invariants
        hold; 0 items called twice."""
        assert all(s.is_completed() for s in states), [s.message for s in states]
        ids = self.batch_ids()
        assert len(ids) == batches
        for batch_id in ids:
            self.assert_invariants(batch_id, expect_total=items)
            row = self.batch(batch_id)
            assert (row["task_status"], row["success_count"]) == ("completed", items)
        assert len(self.assert_calls_per_item(1)) == batches * items

    def assert_calls_per_item(self, limit: int) -> dict[int, int]:
        """I6: GET /v1/me per account never above ``limit``; returns the counts."""
        calls = self.uid_calls()
        worst = max(calls.values(), default=0)
        assert worst <= limit, f"an item was called {worst} times (limit {limit})"
        return calls


def make_fault_env(monkeypatch, canary: str, mysql_url: str, redis_url: str, prefix: str, **env) -> Iterator[FaultEnv]:
    upgrade(mysql_url)
    with PlatformSimulator(latency_ms=3) as sim:
        configure_env(
            monkeypatch, database_url=mysql_url, redis_url=redis_url, redis_key_prefix=prefix,
            platform_url=sim.url, concurrency=20, flush_interval_s=0.2, cancel_poll_s=0.5,
            http_backoff_base_s=0.01, http_backoff_max_s=0.05, **env,
        )
        fenv = FaultEnv(mysql_url, get_engine(mysql_url), sim, prefix, canary=canary, redis_url=redis_url,
                        db_name=mysql_url.rsplit("/", 1)[1].split("?")[0])
        yield fenv
    get_settings.cache_clear()
    get_engine(mysql_url).dispose()


# -- leak scanning (I7) -----------------------------------------------------------------


class AllLogs(logging.Handler):
    """Every record of every logger at DEBUG; formatted (with its traceback) when read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def _line(self, record: logging.LogRecord) -> str:
        try:
            return self.format(record)
        except Exception as exc:  # a record that cannot be formatted is still evidence
            return f"{record.name} unformattable {record.msg!r} {record.args!r} {exc}"

    @property
    def lines(self) -> list[str]:
        return [self._line(r) for r in self.records]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)


def drain_prefect_logs() -> None:
    """Send the run logs still queued for Prefect's API now (not at interpreter exit, when the
    session's server is gone and the worker spends a minute on connection retries)."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)


def _mysql_dump(env: FaultEnv) -> str:
    host, port = env.engine.url.host, env.engine.url.port or 3306
    out = subprocess.run(
        ["mysqldump", "-h", host, "-P", str(port), "-u", MYSQL_USER, "--no-create-info", "--skip-extended-insert",
         f"--ignore-table={env.db_name}.la_alt_account", env.db_name],
        capture_output=True, text=True, check=True,
    )
    return out.stdout


def _redis_dump(env: FaultEnv) -> str:
    client = redis.Redis.from_url(env.redis_url)
    parts = []
    for key in client.scan_iter(match=f"{env.redis_prefix}*"):
        parts.append(repr(key))
        if client.type(key) == b"string":
            parts.append(repr(client.get(key)))
    return "\n".join(parts)


@dataclass
class Leaks:
    found: dict[str, int]
    samples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.found.values())


def scan_for_tokens(env: FaultEnv, prefect_server, logs: AllLogs | None = None, *texts: str) -> Leaks:
    """Count canaries, issued tokens and the Prefect credential in logs (ours and the server's),
    Prefect's database, Redis and the mirror tables."""
    tokens = set(env.tokens)
    try:
        tokens.update(a[k] for a in env.sim.accounts() for k in ("access_token", "refresh_token"))
    except Exception:
        pass
    needles = [env.canary, *auth_needles(prefect_server.auth_string)]
    sources = {
        "logs": logs.text if logs is not None else "",
        "prefect server log": (prefect_server.home / "server.log").read_text(errors="replace"),
        "prefect database": prefect_db_dump(prefect_server),
        "redis": _redis_dump(env),
        "mirror tables": _mysql_dump(env),
        "process output": "\n".join(texts),
    }
    found, samples = {}, []
    for name, blob in sources.items():
        hits = sum(blob.count(n) for n in needles) + sum(1 for m in TOKEN_RE.findall(blob) if m in tokens)
        found[name] = hits
        if hits:
            samples += [f"{name}: {line[:300]}" for line in blob.splitlines()
                        if any(n in line for n in needles) or any(m in tokens for m in TOKEN_RE.findall(line))][:3]
    return Leaks(found, samples)


# -- triggers ---------------------------------------------------------------------------


async def at_progress(env: FaultEnv, fraction: float, action: Callable[[], object], *, min_total: int = 1,
                      timeout: float = 120) -> float:
    """Run ``action`` (in a thread) once processed/total reaches ``fraction``; returns when it fired."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processed, total = await asyncio.to_thread(env.progress)
        if total >= min_total and processed >= fraction * total:
            await asyncio.to_thread(action)
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no progress to {fraction:.0%} within {timeout}s")


def run(coro):
    return asyncio.run(coro)


# -- private servers for faults that stop them -------------------------------------------


class PrivateMariaDB:
    """A throwaway mariadbd on a free port (its own datadir), stopped and started at will."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="faults-mariadb-"))
        self.port = free_port()
        self._proc: subprocess.Popen | None = None

    def install(self) -> None:
        shutil.chown(self.dir, "mysql", "mysql")
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={self.dir / 'data'}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )

    def start(self, timeout: float = 30) -> None:
        """The brief's ``start-stop-daemon`` cannot tell two mariadbd apart; Popen can."""
        self._proc = subprocess.Popen(
            ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", f"--datadir={self.dir / 'data'}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.dir / 's.sock'}",
             f"--pid-file={self.dir / 'p.pid'}", "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
             "--max-connections=300"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "err.log", "ab"), start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.1)
        raise RuntimeError(f"private mariadbd did not start: {(self.dir / 'err.log').read_text()[-2000:]}")

    def ping(self) -> bool:
        return subprocess.run(["mysqladmin", "-h127.0.0.1", f"-P{self.port}", "-uroot", "ping"],
                              capture_output=True).returncode == 0

    def stop(self) -> None:
        """``mysqladmin shutdown``, then wait for the process to exit."""
        subprocess.run(["mysqladmin", "-h127.0.0.1", f"-P{self.port}", "-uroot", "shutdown"], capture_output=True)
        _reap(self._proc, timeout=30)
        self._proc = None

    def ensure_up(self) -> None:
        if not self.ping():
            self.stop()
            self.start()

    def admin(self) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True)

    def new_database(self) -> str:
        name = f"f_{uuid.uuid4().hex[:12]}"
        conn = self.admin()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
        return f"mysql+pymysql://root:@127.0.0.1:{self.port}/{name}?charset=utf8mb4"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A throwaway redis-server without persistence on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="faults-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> None:
        self._proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """``redis-cli shutdown nosave``: every key is gone, as after a restart without persistence."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        _reap(self._proc, timeout=10)
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _reap(proc: subprocess.Popen | None, timeout: float) -> None:
    """Wait for a server process told to shut down; kill it if it takes longer than ``timeout``."""
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_connections(admin: pymysql.connections.Connection, db_name: str, *, idle_only: bool) -> int:
    """KILL the connections of one database (idle ones only, or all); returns how many."""
    with admin.cursor() as cur:
        cur.execute(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()"
            + (" AND command = 'Sleep'" if idle_only else ""),
            (db_name,),
        )
        ids = [r[0] for r in cur.fetchall()]
        killed = 0
        for conn_id in ids:
            try:
                cur.execute(f"KILL {int(conn_id)}")
                killed += 1
            except pymysql.err.OperationalError:  # already gone
                pass
    return killed


class Repeater:
    """Call ``fn`` every ``period`` seconds in a thread until stopped; counts what it returns."""

    def __init__(self, fn: Callable[[], int], period: float) -> None:
        self._fn, self._period = fn, period
        self._stop = threading.Event()
        self.total = 0
        self.rounds = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._period):
            self.total += self._fn()
            self.rounds += 1

    def __enter__(self) -> "Repeater":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def subprocess_env(**batch: object) -> dict[str, str]:
    """Environment of a CLI worker: this test's BATCH_* settings plus overrides."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    for key, value in batch.items():
        env[f"BATCH_{key.upper()}"] = str(value)
    return env


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)

