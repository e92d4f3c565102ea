"""Per-item work as Prefect tasks: one task run per account, or one per chunk of items.

Both look up the batch's live runtime (client, mirror, limit) by batch id; neither takes
or returns a token. Outcomes go to the mirror writer as they happen.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from batchcore.outcomes import ItemOutcome
from batchlib.runtime import get_runtime
from tasks.run_ui import chunk_state, item_state, quiet_returned_failures

__all__ = ["process_item", "process_chunk"]

quiet_returned_failures()


@task(
    name="process-item",
    task_run_name="{task_type}-{item_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def process_item(
    task_type: str, batch_id: int, item_id: int, item_data: dict[str, Any] | None = None
) -> ItemOutcome | None | State:
    """One item; the caller already holds a slot of the (tenant, type) limit. A failed item ends
    the task run Failed with its reason (the outcome is recorded all the same)."""
    return item_state(await get_runtime(batch_id).process(item_id, item_data))


@task(
    name="process-chunk",
    task_run_name="{task_type}-items-{first_id}-{last_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def process_chunk(task_type: str, batch_id: int, first_id: int, last_id: int) -> State:
    """The items the runner staged from ``first_id`` to ``last_id``, each under a slot of the
    (tenant, type) limit; ends with counts by status in its message, Failed if any item failed."""
    runtime = get_runtime(batch_id)
    items = runtime.take_chunk(first_id)

    async def one(item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome | None:
        async with runtime.limit:
            return await runtime.process(item_id, item_data)

    outcomes = await asyncio.gather(*(one(i, d) for i, d in items))
    counts: dict[str, int] = {"success": 0, "failed": 0, "skipped": 0, "not_started": 0}
    for outcome in outcomes:
        counts[outcome.status if outcome else "not_started"] += 1
    return chunk_state(counts)
