"""A pytest plugin that refuses every connection to MariaDB, Redis, PostgreSQL or Prefect.

    python -m pytest -q -m unit -p tests.support.no_services

Loaded before collection, it makes ``socket.connect`` to the services' ports (3306, 6379, 5432,
4200, and the ports of ``TEST_MYSQL_PORT`` / ``TEST_REDIS_URL``) fail with
``ConnectionRefusedError`` and records each attempt; the session fails if there was any, even
one a test caught. Loopback servers a test starts itself (simulators, a tiny aiohttp app) use
free ephemeral ports and are allowed: they are not services. It runs the tests in this one
process (``-n 0``): a refusal counted in a pytest-xdist worker would not reach the session.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

SERVICE_PORTS = {3306, 6379, 5432, 4200}
for value in (os.environ.get("TEST_MYSQL_PORT"), urlsplit(os.environ.get("TEST_REDIS_URL", "")).port):
    if value:
        SERVICE_PORTS.add(int(value))

attempts: list[str] = []
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _refuse(address: object) -> None:
    if isinstance(address, tuple) and len(address) >= 2 and address[1] in SERVICE_PORTS:
        attempts.append(f"{address[0]}:{address[1]}")
        raise ConnectionRefusedError(f"tests.support.no_services: no service in this run ({address[0]}:{address[1]})")


def connect(self: socket.socket, address: object) -> None:
    _refuse(address)
    return _connect(self, address)


def connect_ex(self: socket.socket, address: object) -> int:
    _refuse(address)
    return _connect_ex(self, address)


socket.socket.connect = connect  # type: ignore[method-assign]
socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """Before pytest-xdist reads it: no worker processes (pytest.ini asks for two)."""
    config.option.numprocesses = 0
    return (yield)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if attempts:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nno_services: {len(attempts)} connection(s) to a service were refused: {sorted(set(attempts))}")


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    terminalreporter.write_line(
        f"no_services: {len(attempts)} connection attempt(s) to ports {sorted(SERVICE_PORTS)}"
    )
