"""Per-process state of one running batch, looked up by batch id.

Prefect tasks receive plain ids; the live objects they need (the batch's HTTP client, its
mirror writer, its concurrency limit) are found here. The keyed concurrency limit is this
limiter: at most one batch of a (tenant, type) is active anywhere (Redis lease + the
database guard), so C slots in its one process bound that key's platform calls everywhere.
C follows the key's Prefect global concurrency limit while the batch runs (tasks/limits.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from batchlib.batch_types import BatchType
from batchlib.errors import ServiceError
from batchlib.item_context import ItemContext
from batchlib.limiter import ResizableLimiter
from batchlib.mirror_writer import MirrorWriter
from batchlib.outcomes import ItemOutcome

__all__ = ["BatchRuntime", "register_runtime", "unregister_runtime", "get_runtime"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class BatchRuntime:
    batch_type: BatchType
    ctx: ItemContext
    mirror: MirrorWriter
    limit: ResizableLimiter
    stop_reason: str | None = None
    calls: int = 0  # items handed to the handler (each costs 1 + retries platform calls at most)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _chunks: dict[int, list[tuple[int, dict | None]]] = field(default_factory=dict)

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self._stopped.set()
            self.limit.open()  # waiters (even on a paused limit) wake, see the stop, start nothing

    def stage_chunk(self, items: list[tuple[int, dict | None]]) -> tuple[int, int]:
        """Keep a chunk's items for its task run, which gets only (first id, last id): Prefect then
        has no item data to walk (it visits every task parameter twice per task run)."""
        first, last = items[0][0], items[-1][0]
        self._chunks[first] = items
        return first, last

    def take_chunk(self, first_id: int) -> list[tuple[int, dict | None]]:
        return self._chunks.pop(first_id, [])

    async def process(self, item_id: int, item_data: dict | None) -> ItemOutcome | None:
        """Handle one item and buffer its outcome; None when the batch stopped before it."""
        if self.stopped:
            return None
        self.calls += 1
        try:
            outcome = await self.batch_type.handle(self.ctx, item_id, item_data)
        except ServiceError as exc:
            outcome = ItemOutcome.failed(item_id, exc.reason)
        except Exception as exc:  # a handler bug must not sink the batch
            log.exception("item %s of batch %s failed unexpectedly", item_id, self.ctx.batch_id)
            outcome = ItemOutcome.failed(item_id, f"internal error: {type(exc).__name__}")
        self.mirror.add(outcome)
        return outcome


_RUNTIMES: dict[int, BatchRuntime] = {}


def register_runtime(runtime: BatchRuntime) -> None:
    _RUNTIMES[runtime.ctx.batch_id] = runtime


def unregister_runtime(batch_id: int) -> None:
    _RUNTIMES.pop(batch_id, None)


def get_runtime(batch_id: int) -> BatchRuntime:
    try:
        return _RUNTIMES[batch_id]
    except KeyError:
        raise LookupError(f"batch {batch_id} is not running in this process") from None
