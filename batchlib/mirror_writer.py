"""Buffers item outcomes and flushes them into the mirror in short, batched transactions.

One flush = one transaction: fence check (also the heartbeat), a set-based guarded UPDATE
per final status, one counter UPDATE, the batch type's side effects. It runs in a worker
thread, so the event loop keeps the platform calls going; a connection is never held across
a platform call. A flush happens every ``interval`` seconds, or sooner when ``max_items``
outcomes are waiting; with nothing to record it still heartbeats every ``heartbeat_s``, and
in between reads the row (one SELECT by id) every ``interval``. Every flush and read notes
whether the admin panel cancelled or soft-deleted the batch (``cancel_requested``, ``on_cancel``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from batchcore.errors import StaleFence
from batchcore.outcomes import ItemOutcome
from batchlib.batch_types import Apply, BatchScope
from batchlib.outage import OutagePolicy
from db import BatchTask, heartbeat, record_outcomes, run_transaction
from db.statuses import CANCELLED

__all__ = ["MirrorWriter", "FlushStats", "TAKEN_OVER", "CANCELLED"]

log = logging.getLogger(__name__)

TAKEN_OVER = "taken over by another run"  # the stop reason when a flush finds the fence stale


@dataclass(slots=True)
class FlushStats:
    flushes: int = 0
    recorded: int = 0
    moved: int = 0
    max_lag_s: float = 0.0  # worst delay between an outcome arriving and its commit


class MirrorWriter:
    def __init__(
        self,
        engine: Engine,
        scope: BatchScope,
        fence: int,
        *,
        apply: Apply | None = None,
        on_stop: Callable[[str], None] | None = None,
        interval: float = 0.5,
        max_items: int = 500,
        heartbeat_s: float = 5.0,
    ) -> None:
        self._engine = engine
        self._scope = scope
        self.batch_id = scope.batch_id
        self.fence = fence
        self._apply = apply
        self._interval = interval
        self._max_items = max_items
        self._heartbeat_s = heartbeat_s
        self._buffer: list[tuple[float, ItemOutcome]] = []
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closing = False
        self._last_write = time.monotonic()
        self.stats = FlushStats()
        self.cancel_requested = False  # the admin panel set the row to cancelled, or soft-deleted it
        self.stale = False  # another run owns the batch now
        self.error: BaseException | None = None  # the database stayed unreachable past the retry budget
        self.error_since: float | None = None  # monotonic time of the first failed flush of this outage
        # Called at once with TAKEN_OVER when a flush finds the fence stale, with CANCELLED when
        # a flush or read finds the row cancelled or deleted: the run stops starting items.
        self._on_stop = on_stop or (lambda reason: None)
        self.on_progress: Callable[[int], None] | None = None  # rows moved by each flush that recorded

    def add(self, outcome: ItemOutcome) -> None:
        self._buffer.append((time.monotonic(), outcome))
        if len(self._buffer) >= self._max_items:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """Flush periodically until ``close()``; failures are kept in ``stale`` / ``error``."""
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._closing:
                break
            if self._buffer or time.monotonic() - self._last_write >= self._heartbeat_s:
                await self._flush_safely()
            else:
                await self._peek_safely()

    async def close(self, outage: OutagePolicy | None = None) -> None:
        """Final flush of whatever is buffered (called once processing has stopped).

        During a database outage it keeps trying until ``outage`` gives up (counted from the
        first failed flush; no policy: one try): a batch whose last items finish while the
        database restarts still records them (found by tests/faults: they were dropped).
        """
        self._closing = True
        self._wake.set()
        while not self.stale:
            async with self._flush_lock:  # a periodic flush in progress may put its outcomes back
                if not self._buffer:
                    return
            await self._flush_safely()
            if self.error is None:
                continue
            if outage is None or self.error_since is None or outage.exhausted(self.error_since):
                return
            await asyncio.sleep(min(0.5, self._interval))

    async def check(self) -> None:
        """Flush now (a heartbeat when nothing is buffered): reads the row's cancel at once."""
        await self._flush_safely()

    def flush_now(self) -> None:
        """Blocking flush, for shutdown paths where the event loop is going away."""
        if self._buffer and not self.stale:
            batch, self._buffer = self._buffer, []
            self._write_batch(batch)

    async def _flush_safely(self) -> None:
        async with self._flush_lock:  # one flush at a time: close() must see a failed one's outcomes
            batch, self._buffer = self._buffer, []
            try:
                await asyncio.to_thread(self._write_batch, batch)
                if self.cancel_requested:
                    self._on_stop(CANCELLED)
            except StaleFence:
                self.stale = True
                self._on_stop(TAKEN_OVER)
            except Exception as exc:  # database down past the retry budget
                log.error("mirror flush of batch %s failed: %s", self.batch_id, type(exc).__name__)
                self._buffer[:0] = batch  # keep them for the next try / the final flush
                self.error = exc
                if self.error_since is None:
                    self.error_since = time.monotonic()

    async def _peek_safely(self) -> None:
        """Nothing to record: only read the row, so the admin panel's cancel is seen within one
        ``interval`` even while no item finishes (a freed slot would start the next item)."""
        try:
            cancelled = await asyncio.to_thread(run_transaction, self._engine, self._read_cancel)
        except Exception:  # an outage: the flushes report it; the next peek tries again
            return
        if cancelled:
            self.cancel_requested = True
            self._on_stop(CANCELLED)

    def _read_cancel(self, session: Session) -> bool:
        """Whether the admin panel cancelled, soft-deleted (or deleted) the row."""
        row = session.execute(
            select(BatchTask.task_status, BatchTask.delete_time).where(BatchTask.id == self.batch_id)
        ).one_or_none()
        return row is None or row.task_status == CANCELLED or row.delete_time is not None

    def _write_batch(self, batch: list[tuple[float, ItemOutcome]]) -> None:
        outcomes = [o for _, o in batch]
        moved, cancelled = run_transaction(self._engine, lambda s: self._write(s, outcomes))
        now = time.monotonic()
        self._last_write = now
        self.error = None
        self.error_since = None
        self.stats.flushes += 1
        self.stats.recorded += len(outcomes)
        self.stats.moved += moved
        if batch:
            self.stats.max_lag_s = max(self.stats.max_lag_s, now - min(t for t, _ in batch))
        if cancelled:
            self.cancel_requested = True
        if self.on_progress is not None and outcomes:
            self.on_progress(moved)

    def _write(self, session: Session, outcomes: list[ItemOutcome]) -> tuple[int, bool]:
        """Record (or heartbeat), then read whether the admin panel cancelled or deleted the row."""
        now = int(time.time())
        if outcomes:
            moved = record_outcomes(session, self.batch_id, self.fence, outcomes, now).total
            if self._apply is not None:
                self._apply(session, outcomes, now, self._scope)
        else:
            heartbeat(session, self.batch_id, self.fence, now)
            moved = 0
        return moved, self._read_cancel(session)
