"""The shared batch runner every batch-type flow calls.

    describe (resume / admin row) -> lease (tenant, type) -> open: validate, claim, detail rows
    -> feed pending items to Prefect tasks under the (tenant, type) limit
    -> mirror outcomes as they arrive -> close: completed / cancelled / failed -> release

Items become one Prefect task run each; above ``chunk_threshold`` items they are grouped
into chunk task runs (Prefect costs ~5 ms of CPU per task run; see docs/benchmarks.md), and
the mirror still gets one detail row per item.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed, State

from batchlib.batch_types import BatchScope, BatchType, get_batch_type
from batchlib.errors import (
    BatchCancelled,
    BatchError,
    DatabaseUnavailable,
    InvalidItems,
    LockLost,
    ServiceError,
    StaleFence,
    UnknownBatch,
)
from batchlib.item_context import ItemContext
from batchlib.limiter import ResizableLimiter
from batchlib.locks import lease_for
from batchlib.mirror_writer import FlushStats, MirrorWriter
from batchlib.runtime import BatchRuntime, register_runtime, unregister_runtime
from batchlib.settings import Settings, get_settings
from batchlib.task_data import items_from_file
from batchlib.token_store import DbTokenStore
from flows.params import document_parameters
from tasks.batch_steps import OpenedBatch, Refusal, close_batch, counts_dict, describe_batch, open_batch
from tasks.items import process_chunk, process_item
from tasks.limits import LimitFollower
from tasks.run_ui import BatchArtifacts, tag_run, task_failure

__all__ = [
    "BatchSummary", "run_batch", "run_batch_flow", "run_items_flow", "batch_flow", "batch_run_name", "retry_request",
]

PAGE = 5000
CANCELLED_BY_PANEL = "cancelled by the admin panel (la_batch_task.task_status set to cancelled / row deleted)"
CANCELLED_FROM_PREFECT = "cancelled from Prefect (UI, CLI or API): the flow run is cancelling"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchSummary:
    batch_id: int
    tenant_id: int
    task_type: str
    status: str
    total: int
    processed: int
    success: int
    failed: int
    pending: int
    elapsed_s: float
    mode: str
    stop_reason: str | None = None
    mirror_flushes: int = 0
    mirror_max_lag_s: float = 0.0  # worst delay between an item finishing and the panel seeing it

    def line(self) -> str:
        return (
            f"batch {self.batch_id} ({self.task_type}, tenant {self.tenant_id}) {self.status}: "
            f"{self.processed}/{self.total} processed, {self.success} succeeded, {self.failed} failed"
            + (f", {self.pending} left pending" if self.pending else "")
            + f" in {self.elapsed_s:.1f}s"
        )


def batch_flow(name: str):
    """The ``@flow`` of a batch type: readable run names, and hooks that mirror a run's ending
    (cancelled, crashed, failed) into its batch row when the runner could not close it."""
    from prefect import flow

    from tasks.hooks import mark_cancelled, mark_crashed, mark_failed

    decorate = flow(
        name=name,
        flow_run_name=batch_run_name(name),
        on_cancellation=[mark_cancelled],
        on_crashed=[mark_crashed],
        on_failure=[mark_failed],
    )
    return lambda fn: decorate(document_parameters(fn))


async def run_items_flow(
    task_type: str, *, items: list[dict[str, Any]] | None, retry_failed_of: int | None = None, **request: Any,
) -> State:
    """Flow body of a type whose input is a list of items (``task_data = {"items": [...]}``).

    Each such type defines its own ``@batch_flow`` function at module level (so a deployment's
    entrypoint names that module) and calls this with its parameters; ``retry_failed_of``
    makes the batch a retry of the failed items of that finished batch.
    """
    task_data = retry_request(retry_failed_of) or ({"items": items} if items is not None else None)
    return await run_batch_flow(task_type, task_data=task_data, **request)


def retry_request(retry_failed_of: int | None) -> dict[str, Any] | None:
    """The task_data of a retry of the failed items of batch ``retry_failed_of`` (None: not a retry)."""
    return None if retry_failed_of is None else {"retry_failed_of": retry_failed_of}


def batch_run_name(flow_name: str):
    """Flow-run names that say what runs: ``account-check-tenant-7`` or ``account-check-batch-42``."""

    def name() -> str:
        from prefect.runtime import flow_run

        params = flow_run.parameters
        if params.get("batch_id") is not None:
            return f"{flow_name}-batch-{params['batch_id']}"
        return f"{flow_name}-tenant-{params.get('tenant_id')}"

    return name


async def run_batch_flow(task_type: str, **request: Any) -> State:
    """Flow body shared by every batch type: a summary, or a readable failed/cancelled state."""
    try:
        summary = await run_batch(task_type, **request)
    except BatchCancelled as exc:
        # The admin panel cancelled or deleted the row after the dispatcher started this run.
        get_run_logger().warning("not started: %s", exc)
        return Cancelled(message=f"rejected: {exc}")
    except (StaleFence, LockLost, DatabaseUnavailable) as exc:
        # Another run owns the batch now (everything we would still write is fenced out), or
        # the database stayed down past the outage budget (the reaper and a resume finish it).
        get_run_logger().error("stopped: %s", exc)
        return Failed(message=f"stopped: {exc}")
    except BatchError as exc:
        # A user-facing refusal (bad input, already active, unknown batch): no traceback.
        get_run_logger().error("rejected: %s", exc)
        return Failed(message=f"rejected: {exc}")
    data = asdict(summary)
    if summary.status == "completed":
        return Completed(message=summary.line(), data=data)
    if summary.status == "cancelled":
        return Cancelled(message=summary.line(), data=data)
    return Failed(message=summary.line() + (f": {summary.stop_reason}" if summary.stop_reason else ""), data=data)


async def run_batch(
    task_type: str,
    *,
    tenant_id: int | None,
    task_data: dict[str, Any] | None,
    task_name: str | None = None,
    create_admin_id: int = 0,
    batch_id: int | None = None,
    takeover: bool = False,
    items_file: str | None = None,
) -> BatchSummary:
    started = time.monotonic()
    settings = get_settings()
    batch_type = get_batch_type(task_type)
    flow_run_id = _flow_run_id()
    source = None
    if items_file is not None:
        if batch_id is not None or task_data is not None:
            raise InvalidItems("give the items inline, in a file, or as a batch id: one of them")
        task_data = {batch_type.staged_as or "items": items_from_file(settings, batch_type, items_file)}
        source = f"file:{os.path.basename(items_file)}"
    if batch_id is not None:
        row = _accepted(describe_batch(batch_id, task_type))
        if tenant_id is not None and tenant_id != row.tenant_id:
            raise BatchError(f"batch {batch_id} belongs to tenant {row.tenant_id}, not tenant {tenant_id}")
        tenant_id, task_data = row.tenant_id, row.task_data
    retry_of = _retry_source(task_data)
    if tenant_id is None and retry_of is not None:  # a retry runs for the tenant of the batch it retries
        tenant_id = _tenant_of(retry_of)
    if tenant_id is None:
        raise BatchError("give a tenant id (or the id of a batch to resume)")
    await tag_run(flow_run_id, tenant_id, task_type)

    lease = lease_for(settings, tenant_id, task_type)
    with lease:
        collected, collect_error = None, None
        if batch_type.collect is not None and retry_of is None and not (
            batch_id is not None and _counts_of(batch_id)["total"]
        ):
            try:
                collected = await batch_type.collect(settings, tenant_id, task_data or {})
            except ServiceError as exc:  # the outside service failed: a failed batch, resumable
                collect_error = f"could not collect the items: {exc.reason}"
        opened = _accepted(open_batch(
            task_type, tenant_id, task_data,
            task_name=task_name or f"{batch_type.title} (tenant {tenant_id})",
            create_admin_id=create_admin_id, batch_id=batch_id, flow_run_id=flow_run_id, takeover=takeover,
            collected=collected, collect_error=collect_error, source=source,
        ))
        artifacts = BatchArtifacts(_engine(settings), opened.batch_id, task_type, tenant_id)
        if opened.error is not None:
            counts, status, reason, mode, flushed = _counts_of(opened.batch_id), "failed", opened.error, "none", None
        elif opened.pending == 0:
            counts, status, reason, mode, flushed = _counts_of(opened.batch_id), "completed", None, "none", None
        else:
            status, reason, mode, flushed = await _process(batch_type, settings, tenant_id, opened, lease, artifacts)
            counts = await _patiently(
                settings, opened.batch_id, "closing the batch",
                lambda: close_batch(opened.batch_id, opened.fence, status, reason),
            )
            status = counts.pop("status", status)  # the admin panel's cancel has the last word
    summary = BatchSummary(
        opened.batch_id, tenant_id, task_type, status, counts["total"], counts["processed"],
        counts["success"], counts["failed"], counts["pending"], time.monotonic() - started, mode, reason,
        flushed.flushes if flushed else 0, round(flushed.max_lag_s, 3) if flushed else 0.0,
    )
    get_run_logger().info(summary.line())
    await artifacts.finish(summary.status, summary.elapsed_s, summary.stop_reason)
    return summary


async def _process(
    batch_type: BatchType, settings: Settings, tenant_id: int, opened: OpenedBatch, lease, artifacts: BatchArtifacts
) -> tuple[str, str | None, str, FlushStats]:
    """Run every pending item; return (final status, reason, mode, mirror stats).

    Raises StaleFence / LockLost when another run took the batch over: then we write nothing.
    """
    from db import get_engine

    engine = get_engine(settings.database_url.get_secret_value())
    mirror = MirrorWriter(
        engine, opened.batch_id, opened.fence, apply=_bound_apply(batch_type, opened.batch_id, tenant_id),
        interval=settings.flush_interval_s, max_items=settings.flush_max_items,
        heartbeat_s=settings.heartbeat_interval_s,
    )
    token_store = DbTokenStore(engine)
    chunked = opened.pending > settings.chunk_threshold
    mode = f"chunks of {settings.chunk_size}" if chunked else "task per item"
    state = None
    if batch_type.prepare is not None:  # per-run state for the handler, read in one transaction
        from db import run_transaction

        bare = ItemContext(tenant_id, opened.batch_id, batch_type.name, settings, engine)
        state = await asyncio.to_thread(run_transaction, engine, lambda s: batch_type.prepare(s, bare))
    async with _clients(batch_type, settings, token_store, tenant_id) as (platform, kubo):
        ctx = ItemContext(tenant_id, opened.batch_id, batch_type.name, settings, engine, platform, kubo, state)
        limits = LimitFollower(tenant_id, batch_type.name, settings, get_run_logger())
        limit = await limits.start()  # the key's Prefect limit (or the configured default), then polled
        runtime = BatchRuntime(batch_type, ctx, mirror, limits.limiter)
        # Taken over: stop starting items now, not at the watcher's next poll (a stale owner
        # woken from a pause made ~100 needless platform calls in tests/faults).
        mirror.on_stale = lambda: runtime.stop("taken over by another run")
        # The admin panel's cancel (or soft delete): stop starting items as soon as a flush reads it.
        mirror.on_cancel = lambda: _stop_cancelled(runtime, opened.batch_id, CANCELLED_BY_PANEL)
        register_runtime(runtime)
        await mirror.check()  # a cancel that came between the claim and now: start nothing
        flusher = asyncio.create_task(mirror.run())
        watcher = asyncio.create_task(_watch(runtime, lease, settings, opened))
        shower = asyncio.create_task(artifacts.follow(lambda: mirror.stats.moved))
        get_run_logger().info(
            "batch %s: %s pending of %s items, %s, at most %s in flight",
            opened.batch_id, opened.pending, opened.total, mode, limit,
        )
        try:
            await _feed(runtime, settings, token_store, chunked)
        finally:
            watcher.cancel()
            await mirror.close(patience_s=settings.db_outage_budget_s)
            await artifacts.stop_following(shower)
            flusher.cancel()
            unregister_runtime(opened.batch_id)
            await limits.close()
    if mirror.stale:
        raise StaleFence(opened.batch_id, opened.fence)
    if lease.lost:
        raise LockLost(lease.key)
    reason = runtime.stop_reason
    if reason == "cancelled":
        return "cancelled", None, mode, mirror.stats
    if reason is not None or mirror.error is not None:
        return "failed", reason or f"database unavailable: {type(mirror.error).__name__}", mode, mirror.stats
    return "completed", None, mode, mirror.stats


def _bound_apply(batch_type: BatchType, batch_id: int, tenant_id: int):
    """The type's ``apply`` with this batch's scope bound: what the mirror writer calls."""
    if batch_type.apply is None:
        return None
    scope, apply = BatchScope(batch_id, tenant_id), batch_type.apply
    return lambda session, outcomes, now: apply(session, outcomes, now, scope)


class _clients:
    """The batch's long-lived HTTP clients (one per batch run, bound to this event loop)."""

    def __init__(self, batch_type: BatchType, settings: Settings, token_store: DbTokenStore, tenant_id: int) -> None:
        self._type, self._settings, self._store, self._tenant_id = batch_type, settings, token_store, tenant_id
        self._open: list[Any] = []

    async def __aenter__(self) -> tuple[Any, Any]:
        platform = kubo = None
        if self._type.uses_platform:
            from batchlib.platform_client import PlatformClient

            platform = await PlatformClient.from_settings(self._settings, self._store).__aenter__()
            self._open.append(platform)
        if self._type.uses_kubo:
            from batchlib.kubo_client import KuboClient

            kubo = await KuboClient.from_settings(self._settings, self._tenant_id).__aenter__()
            self._open.append(kubo)
        return platform, kubo

    async def __aexit__(self, *exc: object) -> None:
        for client in reversed(self._open):
            await client.__aexit__(None, None, None)


async def _feed(runtime: BatchRuntime, settings: Settings, token_store: DbTokenStore, chunked: bool) -> None:
    """Page through pending items and hand them to task runs, never more than the limit at once."""
    from db import pending_items, run_transaction

    ctx = runtime.ctx
    in_flight: set[asyncio.Task] = set()
    # Enough chunks in flight to keep every slot of the limit busy, and no more (the limit may
    # change while the batch runs: the chunk slots follow it).
    chunk_slots = ResizableLimiter(1)
    after, older_pages = 0, []  # credentials cached for the pages still possibly in flight
    try:
        while not runtime.stopped:
            try:
                page = await _patiently(
                    settings, ctx.batch_id, "reading pending items",
                    lambda: run_transaction(ctx.engine, lambda s: pending_items(s, ctx.batch_id, after, PAGE)),
                    blocking=True,
                )
            except DatabaseUnavailable:
                runtime.stop(f"database unavailable for {settings.db_outage_budget_s:g}s")
                break
            if not page:
                break
            after = page[-1][0]
            if runtime.batch_type.uses_platform:
                # In flight is at most one page's tail (the limit << PAGE), so the page before the
                # previous one is done: drop its credentials to keep memory bounded.
                if len(older_pages) == 2:
                    token_store.forget(older_pages.pop(0))
                older_pages.append([i for i, _ in page])
                ids = older_pages[-1]
                try:
                    await _patiently(settings, ctx.batch_id, "loading credentials",
                                     lambda: token_store.preload(ids), blocking=True)
                except DatabaseUnavailable:
                    runtime.stop(f"database unavailable for {settings.db_outage_budget_s:g}s")
                    break
            if chunked:
                for start in range(0, len(page), settings.chunk_size):
                    part = page[start : start + settings.chunk_size]
                    chunk_slots.resize(-(-runtime.limit.size // settings.chunk_size) + 1)
                    await chunk_slots.acquire()
                    if runtime.stopped:
                        chunk_slots.release()
                        break
                    _spawn(in_flight, _run_chunk(runtime, part), chunk_slots)
            else:
                for item_id, item_data in page:
                    await runtime.limit.acquire()
                    if runtime.stopped:
                        runtime.limit.release()
                        break
                    _spawn(in_flight, _run_item(runtime, item_id, item_data), runtime.limit)
    except BaseException:
        runtime.stop("internal error")  # start nothing new; the ones running finish below
        raise
    finally:
        # Always wait for the items in flight: leaving them running would close the HTTP client
        # under them and record them failed (found by tests/faults, on a database outage).
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


async def _patiently(
    settings: Settings, batch_id: int, what: str, fn: Callable[[], T], *, blocking: bool = False
) -> T:
    """``fn()`` (in a worker thread when ``blocking``), retried through a database outage.

    ``run_transaction`` already retries a few times within ~2 s; this keeps going until the
    outage has lasted ``db_outage_budget_s``, then raises DatabaseUnavailable. Other errors
    propagate at once.
    """
    from sqlalchemy.exc import DBAPIError

    from db import is_retryable

    first_failure: float | None = None
    while True:
        try:
            return await asyncio.to_thread(fn) if blocking else fn()
        except DBAPIError as exc:
            if not is_retryable(exc):
                raise
            now = time.monotonic()
            first_failure = first_failure or now
            if now - first_failure >= settings.db_outage_budget_s:
                raise DatabaseUnavailable(batch_id, settings.db_outage_budget_s, what) from None
            await asyncio.sleep(min(1.0, settings.db_outage_budget_s / 4))


def _spawn(in_flight: set[asyncio.Task], coro, slot: ResizableLimiter) -> None:
    job = asyncio.create_task(coro)
    in_flight.add(job)

    def done(t: asyncio.Task) -> None:
        in_flight.discard(t)
        slot.release()

    job.add_done_callback(done)


async def _run_item(runtime: BatchRuntime, item_id: int, item_data: dict | None) -> None:
    from batchlib.outcomes import ItemOutcome

    try:  # a failed item is a Failed task run (its outcome already recorded): not an error here
        state = await process_item(runtime.batch_type.name, runtime.ctx.batch_id, item_id, item_data,
                                   return_state=True)
        error = await task_failure(state)
    except Exception as exc:
        error = type(exc).__name__
    if error is not None:  # the task run itself failed (not the item's work)
        runtime.mirror.add(ItemOutcome.failed(item_id, f"internal error: {error}"))


async def _run_chunk(runtime: BatchRuntime, part: list) -> None:
    from batchlib.outcomes import ItemOutcome

    first, last = runtime.stage_chunk(part)
    try:  # a chunk with failed items ends Failed with its counts: not an error here
        state = await process_chunk(runtime.batch_type.name, runtime.ctx.batch_id, first, last, return_state=True)
        error = await task_failure(state)
    except Exception as exc:
        error = type(exc).__name__
    if error is not None:
        # Items that already have an outcome keep it (the mirror moves only pending rows).
        runtime.take_chunk(first)
        for item_id, _ in part:
            runtime.mirror.add(ItemOutcome.failed(item_id, f"internal error: {error}"))


async def _watch(runtime: BatchRuntime, lease, settings: Settings, opened: OpenedBatch) -> None:
    """Stop the feed on cancellation (Prefect or admin panel), a lost lease or fence, a long DB outage."""
    logger = get_run_logger()
    flow_run_id = _flow_run_id()
    last_poll = last_log = time.monotonic()
    error_since: float | None = None
    while not runtime.stopped:
        await asyncio.sleep(0.2)
        now = time.monotonic()
        mirror = runtime.mirror
        if lease.lost:
            runtime.stop("lease lost")
        elif mirror.stale:
            runtime.stop("taken over by another run")
        elif mirror.cancel_requested:
            _stop_cancelled(runtime, opened.batch_id, CANCELLED_BY_PANEL)
        if mirror.error is not None:
            error_since = error_since or now
            if now - error_since > settings.db_outage_budget_s:
                runtime.stop(f"database unavailable for {settings.db_outage_budget_s:.0f}s")
        else:
            error_since = None
        if flow_run_id and now - last_poll >= settings.cancel_poll_s:
            last_poll = now
            if not runtime.stopped and await _is_cancelling(flow_run_id):
                _stop_cancelled(runtime, opened.batch_id, CANCELLED_FROM_PREFECT)
        if now - last_log >= settings.progress_log_s:
            last_log = now
            logger.info(
                "batch %s progress: %s/%s recorded", opened.batch_id, mirror.stats.moved, opened.pending
            )


def _stop_cancelled(runtime: BatchRuntime, batch_id: int, who: str) -> None:
    """Stop the feed on a cancel, saying once in the run's log who cancelled."""
    if not runtime.stopped:
        get_run_logger().warning("batch %s %s", batch_id, who)
    runtime.stop("cancelled")


async def _is_cancelling(flow_run_id: str) -> bool:
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
    except Exception:  # the API being slow must not stop the batch
        return False
    return bool(run.state and (run.state.is_cancelling() or run.state.is_cancelled()))


def _retry_source(task_data: dict[str, Any] | None) -> int | None:
    """The batch whose failed items this request retries; a malformed link is refused later, by open_batch."""
    from db.failures import retry_source

    try:
        return retry_source(task_data)
    except BatchError:
        return None


def _accepted(result: T | Refusal) -> T:
    if isinstance(result, Refusal):
        result.raise_()
    return result


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def _tenant_of(batch_id: int) -> int:
    """The tenant of a batch a retry names (read only: the old batch is never written here)."""
    from db import get_batch, get_engine, run_transaction

    engine = get_engine(get_settings().database_url.get_secret_value())
    row = run_transaction(engine, lambda s: get_batch(s, batch_id))
    if row is None or row.delete_time is not None:
        raise UnknownBatch(batch_id)
    return int(row.tenant_id)


def _engine(settings: Settings):
    from db import get_engine

    return get_engine(settings.database_url.get_secret_value())


def _counts_of(batch_id: int) -> dict[str, int]:
    from db import get_engine, recount, run_transaction

    engine = get_engine(get_settings().database_url.get_secret_value())
    return counts_dict(run_transaction(engine, lambda s: recount(s, batch_id)))
