"""The one policy for an unreachable mirror database during a run.

``run_transaction`` already retries a unit of work a few times within ~2 s. Past that, a run
waits the outage out for ``BATCH_DB_OUTAGE_BUDGET_S`` counted from the first failure, trying
again every ``pause_s``; then it gives up: the run stops starting items, and the reaper and a
resume finish the batch later. The runner's reads, its watcher and the mirror writer's last
flush all count against this budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from batchcore.errors import DatabaseUnavailable
from db import is_retryable

__all__ = ["OutagePolicy"]

T = TypeVar("T")


class OutagePolicy:
    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.pause_s = min(1.0, budget_s / 4)

    def exhausted(self, since: float | None, now: float | None = None) -> bool:
        """Whether an outage that began at ``since`` (monotonic; None: no outage) outlasted the budget."""
        return since is not None and (time.monotonic() if now is None else now) - since >= self.budget_s

    async def wait_out(self, batch_id: int, what: str, fn: Callable[[], T], *, blocking: bool = False) -> T:
        """``fn()`` (in a worker thread when ``blocking``), tried again through an outage until
        the budget is spent, then DatabaseUnavailable. Other errors propagate at once."""
        since: float | None = None
        while True:
            try:
                return await asyncio.to_thread(fn) if blocking else fn()
            except DBAPIError as exc:
                if not is_retryable(exc):
                    raise
                since = since or time.monotonic()
                if self.exhausted(since):
                    raise DatabaseUnavailable(batch_id, self.budget_s, what) from None
                await asyncio.sleep(self.pause_s)
