"""Per-item work as Prefect tasks: one task run per account, or one per chunk of items.

Both work for the batch run that started them (``flows.batch_runner.BatchRun``), which they
find in ``RUN``, a context variable the run sets before it starts any item: asyncio copies the
context into every task it creates, so each task run sees its own batch's run and no other.
The run is not a task parameter because Prefect walks every parameter of every task run
(twice) and formats run names from them: a live object holding HTTP clients and buffers
would be walked per item and could end up in a task run's record. Neither task takes or
returns a token. Outcomes go to the run's mirror writer as they happen.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from batchcore.outcomes import ItemOutcome
from tasks.run_ui import chunk_state, item_state, quiet_returned_failures

__all__ = ["RUN", "ItemRunner", "process_item", "process_chunk"]

quiet_returned_failures()


class ItemRunner(Protocol):
    """What the item tasks need of their batch run."""

    async def process(self, item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome | None: ...

    async def run_chunk(self, first_id: int) -> dict[str, int]: ...


RUN: ContextVar[ItemRunner] = ContextVar("batch_run")


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
    return item_state(await RUN.get().process(item_id, item_data))


@task(
    name="process-chunk",
    task_run_name="{task_type}-items-{first_id}-{last_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
async def process_chunk(task_type: str, batch_id: int, first_id: int, last_id: int) -> State:
    """The items the run staged from ``first_id`` to ``last_id``, each under a slot of the
    (tenant, type) limit (in the run's loop or a helper process); ends with counts by status in
    its message, Failed if any item failed."""
    return chunk_state(await RUN.get().run_chunk(first_id))
