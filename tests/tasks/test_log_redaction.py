"""The websockets loggers never show the Prefect credential, even at DEBUG."""

from __future__ import annotations

import logging

import pytest

import tasks  # noqa: F401  (installs the mask, as every flow run does)

pytestmark = pytest.mark.unit

SECRET = "batch:s3cret-Pa55"


class Frame:  # what websockets passes as the argument of "> %s"
    def __str__(self) -> str:
        return "TEXT '{\"type\":\"auth\",\"token\":\"" + SECRET + "\"}' [40 bytes]"


@pytest.mark.parametrize("logger_name", ["websockets.client", "websockets.server"])
def test_auth_frames_and_headers_are_masked(logger_name: str, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger(logger_name)
    with caplog.at_level(logging.DEBUG):
        logger.debug("> %s", Frame())
        logger.debug("> %s: %s", "Authorization", "Basic YmF0Y2g6czNjcmV0LVBhNTU=")
        logger.debug("> TEXT '{\"type\":\"auth\",\"token\":\"batch:s3cr...' [40 bytes]")  # truncated dump
        logger.debug("= connection is %s", "OPEN")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "> TEXT '{\"type\":\"auth\",\"token\":\"***\"}' [40 bytes]",
        "> Authorization: Basic ***",
        "> TEXT '{\"type\":\"auth\",\"token\":\"***' [40 bytes]",
        "= connection is OPEN",
    ]
    assert not any("s3cr" in line or "YmF0Y2g6" in line for line in lines)
