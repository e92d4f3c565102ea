"""The retry policy (both HTTP clients, pin_sync, notify), full-jitter backoff, the Retry-After header."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchcore.settings import Settings
from batchlib.backoff import RetriesExhausted, RetryPolicy, full_jitter, parse_retry_after

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


class Edge(random.Random):
    """A "random" draw that is always the top (or the bottom) of its range."""

    def __init__(self, top: bool = True) -> None:
        super().__init__(0)
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


class Flaky:
    """Fails ``failures`` times with ``error`` (or forever), then returns "done"; counts the calls."""

    def __init__(self, failures: int | None = None, error: BaseException | None = None) -> None:
        self.failures, self.error, self.calls = failures, error or ConnectionError("down"), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures is None or self.calls <= self.failures:
            raise self.error
        return "done"


def recording(policy: RetryPolicy) -> tuple[RetryPolicy, list[float]]:
    """The same policy, its async waits recorded instead of slept."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    fields: dict[str, Any] = {name: getattr(policy, name) for name in ("max_retries", "base", "cap", "retry_after_max", "rng")}
    return RetryPolicy(**fields, sleep=sleep), waits


def run_async(policy: RetryPolicy, flaky: Flaky, **options: Any) -> Any:
    async def call() -> str:
        return flaky()

    return asyncio.run(policy.retrying(call, **options))


@given(st.integers(0, 70), st.floats(0, 1), st.floats(0, 10))
def test_policy_delays_stay_in_bounds(retry: int, base: float, cap: float) -> None:
    policy = RetryPolicy(base=base, cap=cap, rng=random.Random(retry))
    assert 0 <= policy.delay(retry) <= min(cap, base * 2**retry)
    assert RetryPolicy(base=base, cap=cap, rng=Edge()).delay(retry) == min(cap, base * 2 ** min(retry, 62))


def test_retry_after_is_a_floor_capped_at_retry_after_max() -> None:
    low, high = RetryPolicy(base=1, retry_after_max=30, rng=Edge(False)), RetryPolicy(base=1, retry_after_max=30, rng=Edge())
    assert low.delay(0, retry_after=7) == 7 == high.delay(0, retry_after=7)  # jitter up to 1 s: Retry-After wins
    assert low.delay(0, retry_after=100) == 30 == high.delay(0, retry_after=100)  # capped
    assert low.delay(0, retry_after=0.25) == 0.25 and high.delay(0, retry_after=0.25) == 1  # never less than either
    assert high.delay(6, retry_after=0.25) == 5  # the backoff's own cap (default 5 s)


def test_retrying_counts_attempts_and_gives_up_with_the_last_error() -> None:
    policy, waits = recording(RetryPolicy(max_retries=3, base=0.1, cap=0.3, rng=Edge()))
    flaky = Flaky()
    with pytest.raises(RetriesExhausted) as spent:
        run_async(policy, flaky, transient=ConnectionError)
    assert flaky.calls == 4 == spent.value.attempts == policy.attempts
    assert spent.value.last is flaky.error and spent.value.__cause__ is flaky.error
    assert waits == [0.1, 0.2, 0.3]  # full jitter's ceilings (Edge draws the top), capped


def test_retrying_returns_once_a_retry_succeeds() -> None:
    policy, waits = recording(RetryPolicy(max_retries=3))
    flaky = Flaky(failures=2)
    seen: list[tuple[BaseException, float]] = []
    assert run_async(policy, flaky, transient=ConnectionError, on_retry=lambda exc, pause: seen.append((exc, pause))) == "done"
    assert flaky.calls == 3 and len(waits) == 2 and [pause for _, pause in seen] == waits


def test_no_retries_means_one_attempt() -> None:
    policy, waits = recording(RetryPolicy(max_retries=0))
    flaky = Flaky()
    with pytest.raises(RetriesExhausted) as spent:
        run_async(policy, flaky)
    assert flaky.calls == 1 == spent.value.attempts and waits == []


def test_a_non_transient_error_is_raised_at_once() -> None:
    policy, waits = recording(RetryPolicy(max_retries=3))
    flaky = Flaky(error=ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        run_async(policy, flaky, transient=ConnectionError)
    assert flaky.calls == 1 and waits == []


def test_retrying_waits_for_the_retry_after_an_error_carries() -> None:
    class Limited(Exception):
        retry_after = 12.0

    policy, waits = recording(RetryPolicy(max_retries=2, base=0.1, retry_after_max=10, rng=Edge()))
    with pytest.raises(RetriesExhausted):
        run_async(policy, Flaky(error=Limited()), transient=Limited)
    assert waits == [10, 10]


def test_a_negative_retry_count_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RetryPolicy(max_retries=-1)


def test_policies_from_the_settings() -> None:
    settings = Settings(http_max_retries=5, http_backoff_base_s=0.5, http_backoff_max_s=8, http_retry_after_max_s=9,
                        notify_attempts=2, notify_backoff_base_s=1.5, notify_backoff_max_s=4)
    assert RetryPolicy.http(settings) == RetryPolicy(5, 0.5, 8, 9)
    assert RetryPolicy.notify(settings) == RetryPolicy(1, 1.5, 4) and RetryPolicy.notify(settings).attempts == 2


# -- the sync variant (notify's threads): a deadline bounds the attempts and the waits ------------------
class Clock:
    """Fake monotonic time: a call costs ``cost`` seconds, a sleep what it asks for."""

    def __init__(self, cost: float = 1.0) -> None:
        self.now, self.cost, self.waits = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def costly(self, flaky: Flaky) -> Any:
        def call() -> str:
            self.now += self.cost
            return flaky()

        return call


def test_sync_stops_at_its_deadline() -> None:
    clock, flaky = Clock(), Flaky()
    policy = RetryPolicy(max_retries=9, base=10, cap=10, rng=Edge())
    with pytest.raises(RetriesExhausted) as spent:
        policy.retrying_sync(clock.costly(flaky), deadline=2.5, sleep=clock.sleep, clock=clock)
    # attempt 1 runs 0..1 s; the 10 s wait is cut to the 1.5 s left; no attempt starts at 2.5 s
    assert flaky.calls == 1 == spent.value.attempts and clock.waits == [1.5] and clock.now == 2.5


def test_sync_makes_no_attempt_past_the_deadline() -> None:
    clock, flaky = Clock(), Flaky()
    clock.now = 5.0
    with pytest.raises(RetriesExhausted) as spent:
        RetryPolicy().retrying_sync(clock.costly(flaky), deadline=5.0, sleep=clock.sleep, clock=clock)
    assert flaky.calls == 0 == spent.value.attempts and spent.value.last is None


def test_sync_counts_attempts_within_a_far_deadline() -> None:
    clock, flaky = Clock(cost=0.0), Flaky()
    policy = RetryPolicy(max_retries=3, base=1, cap=1, rng=Edge())
    with pytest.raises(RetriesExhausted) as spent:
        policy.retrying_sync(clock.costly(flaky), deadline=1000, sleep=clock.sleep, clock=clock)
    assert flaky.calls == 4 == spent.value.attempts and clock.waits == [1, 1, 1]
    assert spent.value.last is flaky.error


def test_sync_returns_on_success_and_raises_non_transient_errors_at_once() -> None:
    clock = Clock(cost=0.0)
    flaky = Flaky(failures=1)
    assert RetryPolicy().retrying_sync(flaky, deadline=10, sleep=clock.sleep, clock=clock) == "done"
    assert flaky.calls == 2 and len(clock.waits) == 1
    wrong = Flaky(error=KeyError("x"))
    with pytest.raises(KeyError):
        RetryPolicy().retrying_sync(wrong, deadline=10, transient=OSError, sleep=clock.sleep, clock=clock)
    assert wrong.calls == 1
