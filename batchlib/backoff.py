"""One retry policy: full-jitter exponential backoff, ``Retry-After`` honoured up to a cap.

    policy = RetryPolicy.http(settings)                 # BATCH_HTTP_*: both HTTP clients, pin_sync
    value = await policy.retrying(call, transient=KuboUnavailable)
    policy.retrying_sync(send, deadline=t)              # notify's threads, bounded by a deadline
    pause = policy.delay(retry, retry_after)            # loops with their own state (the platform client)

``call`` is tried ``policy.attempts`` (1 + ``max_retries``) times while it raises a ``transient``
error; an error that is not transient propagates at once. When the attempts are spent (or the
deadline passed) ``RetriesExhausted`` is raised, with the attempts made and the last error: the
caller words its own message. A transient error with a ``retry_after`` attribute (seconds, or
None) asks for at least that wait, up to ``retry_after_max``.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from batchcore.settings import Settings

__all__ = ["RetriesExhausted", "RetryPolicy", "full_jitter", "parse_retry_after"]

T = TypeVar("T")
Transient = type[BaseException] | tuple[type[BaseException], ...]


class RetriesExhausted(Exception):
    """Every attempt failed transiently (or the deadline passed): ``attempts`` made, ``last`` error."""

    def __init__(self, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"gave up after {attempts} attempt(s)")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``1 + max_retries`` attempts; before retry ``n`` (0-based) a wait drawn uniformly in
    ``[0, min(cap, base * 2**n)]``, or the ``Retry-After`` asked for (at most ``retry_after_max``)
    when that is longer. ``rng`` (None: the ``random`` module) and the async ``sleep`` are hooks
    for tests."""

    max_retries: int = 3
    base: float = 0.2
    cap: float = 5.0
    retry_after_max: float = 30.0
    rng: random.Random | None = field(default=None, repr=False, compare=False)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")

    @classmethod
    def http(cls, settings: Settings) -> RetryPolicy:
        """``BATCH_HTTP_MAX_RETRIES``, ``_BACKOFF_BASE_S``, ``_BACKOFF_MAX_S``, ``_RETRY_AFTER_MAX_S``."""
        return cls(settings.http_max_retries, settings.http_backoff_base_s, settings.http_backoff_max_s,
                   settings.http_retry_after_max_s)

    @classmethod
    def notify(cls, settings: Settings) -> RetryPolicy:
        """``BATCH_NOTIFY_ATTEMPTS`` tries per channel, ``BATCH_NOTIFY_BACKOFF_{BASE,MAX}_S``."""
        return cls(settings.notify_attempts - 1, settings.notify_backoff_base_s, settings.notify_backoff_max_s)

    @property
    def attempts(self) -> int:
        return self.max_retries + 1

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        pause = full_jitter(retry, self.base, self.cap, self.rng)
        if retry_after is not None:
            pause = max(pause, min(retry_after, self.retry_after_max))
        return pause

    async def retrying(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        transient: Transient = Exception,
        on_retry: Callable[[BaseException, float], object] | None = None,
    ) -> T:
        """``await call()`` until it returns; ``on_retry(error, pause)`` before each wait."""
        for retry in range(self.attempts):
            try:
                return await call()
            except transient as exc:
                if retry == self.max_retries:
                    raise RetriesExhausted(retry + 1, exc) from exc
                pause = self.delay(retry, getattr(exc, "retry_after", None))
                if on_retry is not None:
                    on_retry(exc, pause)
            await self.sleep(pause)
        raise AssertionError("unreachable")

    def retrying_sync(
        self,
        call: Callable[[], T],
        *,
        deadline: float,
        transient: Transient = Exception,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``call()`` until it returns; no attempt starts at or after ``deadline`` (a ``clock()``
        value) and no wait lasts past it."""
        made, last = 0, None
        while made < self.attempts and clock() < deadline:
            try:
                return call()
            except transient as exc:
                made, last = made + 1, exc
            if made < self.attempts:
                sleep(max(0.0, min(self.delay(made - 1, getattr(last, "retry_after", None)), deadline - clock())))
        raise RetriesExhausted(made, last)


def full_jitter(retry: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): uniform in [0, min(cap, base * 2**retry)]."""
    ceiling = min(cap, base * 2 ** min(retry, 62))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` value (delta-seconds or HTTP-date); None if unusable.

    Decimal seconds are accepted too (the simulator sends them for fast tests).
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
        return max(0.0, seconds)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds
