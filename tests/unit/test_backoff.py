"""Retry delays: full-jitter backoff and the Retry-After header (both clients use them)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchlib.backoff import full_jitter, parse_retry_after

pytestmark = pytest.mark.unit


@given(st.integers(min_value=0, max_value=100), st.floats(0.01, 1), st.floats(0.1, 10))
def test_full_jitter_stays_in_bounds(retry: int, base: float, cap: float) -> None:
    assert 0 <= full_jitter(retry, base, cap, random.Random(retry)) <= min(cap, base * 2**retry)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0.5", 0.5), (" 10 ", 10.0), ("-1", None), ("soon", None), (None, None), ("nan", None)],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    from datetime import datetime, timezone

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0


def test_full_jitter_grows_then_stops_at_the_cap() -> None:
    rng = random.Random(7)
    ceilings = [max(full_jitter(retry, 0.1, 2.0, rng) for _ in range(400)) for retry in range(8)]
    assert 0.09 < ceilings[0] <= 0.1 and 0.38 < ceilings[2] <= 0.4  # base * 2**retry
    assert all(1.9 < c <= 2.0 for c in ceilings[5:])  # capped
    assert full_jitter(10_000, 0.1, 2.0, rng) <= 2.0  # no overflow on a huge retry number


def test_a_retry_after_date_in_the_past_is_no_wait() -> None:
    from datetime import datetime, timezone

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0
