"""The batch run every batch-type flow executes, top to bottom in one object, ``BatchRun``:

    describe (resume / admin row) -> lease (tenant, type) -> open: validate, claim, detail rows
    -> feed pending items to Prefect tasks under the (tenant, type) limit, while a watcher
       looks for a reason to stop -> mirror outcomes as they arrive
    -> close: completed / cancelled / failed -> release

Items become one Prefect task run each; above ``chunk_threshold`` items they are grouped
into chunk task runs (Prefect costs ~5 ms of CPU per task run; see docs/benchmarks.md), and
the mirror still gets one detail row per item.

A run stops starting items in one way, ``BatchRun.stop(reason)`` (the first reason wins):
the admin panel's cancel or a stale fence seen by a flush, the watcher (Prefect cancel, lost
lease, a long database outage), or the feed itself (an outage while reading, an internal
error). A refusal (bad input, already active, unknown batch, a cancelled row) is raised once,
as a ``BatchError``, and ``run_batch_flow`` maps it to the run's state once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from batchcore.errors import (
    BatchCancelled,
    BatchError,
    DatabaseUnavailable,
    InvalidItems,
    LockLost,
    ServiceError,
    StaleFence,
    UnknownBatch,
)
from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings, get_settings
from batchlib.batch_types import BatchScope, BatchType, get_batch_type
from batchlib.gc_tuning import quiet_gc
from batchlib.item_context import ItemContext
from batchlib.item_processes import ItemProcesses, ItemProcessExited
from batchlib.kubo_client import KuboClient
from batchlib.limiter import ResizableLimiter
from batchlib.locks import Lease, lease_for
from batchlib.mirror_writer import TAKEN_OVER, FlushStats, MirrorWriter
from batchlib.outage import OutagePolicy
from batchlib.platform_client import PlatformClient
from batchlib.task_data import items_from_file
from batchlib.token_store import DbTokenStore
from db import get_batch, get_engine, pending_items, recount, run_transaction
from db import statuses as st
from db.failures import retry_source
from flows.params import document_parameters
from tasks.batch_steps import OpenedBatch, close_batch, counts_dict, describe_batch, open_batch
from tasks.hooks import mark_cancelled, mark_crashed, mark_failed
from tasks.items import RUN, process_chunk, process_item
from tasks.limits import LimitFollower
from tasks.run_ui import BatchArtifacts, tag_run, task_failure

__all__ = [
    "BatchRequest", "BatchRun", "BatchSummary", "batch_flow", "batch_run_name", "retry_request",
    "run_batch_flow", "run_items_flow",
]

log = logging.getLogger(__name__)

PAGE = 5000  # pending items read at once (with their credentials); the first page is smaller
FIRST_PAGE = 500
CANCELLED_BY_PANEL = "cancelled by the admin panel (la_batch_task.task_status set to cancelled / row deleted)"
CANCELLED_FROM_PREFECT = "cancelled from Prefect (UI, CLI or API): the flow run is cancelling"


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


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """What a flow run asks for: a new batch (tenant + task_data or an items file), or an
    existing row (``batch_id``: the admin panel's, a staged one, or one to resume)."""

    tenant_id: int | None = None
    task_data: dict[str, Any] | None = None
    task_name: str | None = None
    create_admin_id: int = 0
    batch_id: int | None = None
    takeover: bool = False
    items_file: str | None = None


# -- the flow side: decorator, body, state ------------------------------------------------------


def batch_flow(task_type: str, *, name: str | None = None):
    """The ``@flow`` of batch type ``task_type`` (named after it, e.g. ``account-check``, unless
    ``name`` is given): readable run names, documented parameters, and hooks that mirror a run's
    ending (cancelled, crashed, failed) into its batch row when the runner could not close it."""
    batch_type = get_batch_type(task_type)
    decorate = flow(
        name=name or batch_type.flow_name,
        flow_run_name=batch_run_name(batch_type),
        on_cancellation=[mark_cancelled],
        on_crashed=[mark_crashed],
        on_failure=[mark_failed],
    )
    return lambda fn: decorate(document_parameters(fn))


def batch_run_name(batch_type: BatchType):
    """A run's name: the one it was created with when someone chose it (the UI's Run form, the
    dispatcher, ``prefect deployment run --flow-run-name``), so the form's name is the run's;
    otherwise (a schedule's run, or one this process started from the command line) the
    type's readable name, ``account-check-tenant-7`` or ``account-check-batch-42``."""

    def name() -> str:
        ctx = FlowRunContext.get()
        run = ctx.flow_run if ctx else None
        if run is not None and run.deployment_id is not None and not run.auto_scheduled:
            return run.name
        params = flow_run.parameters
        return batch_type.run_name(params.get("tenant_id"), params.get("batch_id"))

    return name


def retry_request(retry_failed_of: int | None) -> dict[str, Any] | None:
    """The task_data of a retry of the failed items of batch ``retry_failed_of`` (None: not a retry)."""
    return None if retry_failed_of is None else {"retry_failed_of": retry_failed_of}


async def run_items_flow(
    task_type: str, *, items: list[dict[str, Any]] | None, retry_failed_of: int | None = None, **request: Any,
) -> State:
    """Flow body of a type whose input is a list of items (``task_data = {"items": [...]}``);
    ``retry_failed_of`` makes the batch a retry of the failed items of that finished batch."""
    task_data = retry_request(retry_failed_of) or ({"items": items} if items is not None else None)
    return await run_batch_flow(task_type, task_data=task_data, **request)


async def run_batch_flow(task_type: str, **request: Any) -> State:
    """Flow body shared by every batch type: a summary, or a readable failed/cancelled state.

    The one place a run's refusal or stop becomes a state."""
    try:
        summary = await BatchRun(task_type, BatchRequest(**request)).execute()
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
    if summary.status == st.COMPLETED:
        return Completed(message=summary.line(), data=data)
    if summary.status == st.CANCELLED:
        return Cancelled(message=summary.line(), data=data)
    return Failed(message=summary.line() + (f": {summary.stop_reason}" if summary.stop_reason else ""), data=data)


# -- the run ----------------------------------------------------------------------------------


class BatchRun:
    """One batch run in this process: its request, lease, mirror writer, clients, limit and
    stop reason. ``execute`` is the whole lifecycle; item tasks reach the run through
    ``tasks.items.RUN`` (``process``, ``run_chunk``)."""

    def __init__(
        self, task_type: str, request: BatchRequest, settings: Settings | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.batch_type: BatchType = get_batch_type(task_type)
        self.request = request
        self.engine = get_engine(settings=self.settings)
        self.outage = OutagePolicy(self.settings.db_outage_budget_s)
        self.log = logger or get_run_logger()
        self.flow_run_id = _flow_run_id()
        self.started = time.monotonic()
        self.tenant_id = request.tenant_id
        self.task_data = request.task_data
        self.source: str | None = None
        self.lease: Lease | None = None
        self.opened: OpenedBatch | None = None
        self.mirror: MirrorWriter | None = None
        self.ctx: ItemContext | None = None
        self.limit = ResizableLimiter(1)  # replaced by the key's limit once processing starts
        self.stop_reason: str | None = None
        self.calls = 0  # items handed to the handler (each costs 1 + retries platform calls at most)
        self.items: ItemProcesses | None = None  # helper processes handling the items, for big batches
        self._chunks: dict[int, list[tuple[int, dict | None]]] = {}

    # -- lifecycle

    async def execute(self) -> BatchSummary:
        retry_of = self.describe()
        # The run's tags go on while the batch opens (one Prefect API round trip less before the first item).
        tagging = asyncio.create_task(tag_run(self.flow_run_id, self.tenant_id, self.batch_type.name))
        try:
            return await self._execute(retry_of)
        finally:
            await tagging

    async def _execute(self, retry_of: int | None) -> BatchSummary:
        self.lease = lease_for(self.settings, self.tenant_id, self.batch_type.name)
        with self.lease:
            opened = self.opened = await self.open(retry_of)
            artifacts = BatchArtifacts(self.engine, opened.batch_id, self.batch_type.name, self.tenant_id)
            mode, flushed = "none", None
            if opened.error is not None:  # closed as failed while opening (collecting failed)
                counts, status, reason = self._counts(), st.FAILED, opened.error
            elif opened.pending == 0:  # nothing left: open_batch closed it
                counts, status, reason = self._counts(), st.COMPLETED, None
            else:
                status, reason, flushed = await self.process_pending(artifacts)
                mode = self.mode
                counts = await self.close(status, reason)
                status = counts.pop("status", status)  # the admin panel's cancel has the last word
        summary = BatchSummary(
            opened.batch_id, self.tenant_id, self.batch_type.name, status, counts["total"], counts["processed"],
            counts["success"], counts["failed"], counts["pending"], time.monotonic() - self.started, mode, reason,
            flushed.flushes if flushed else 0, round(flushed.max_lag_s, 3) if flushed else 0.0,
        )
        self.log.info(summary.line())
        await artifacts.finish(summary.status, summary.elapsed_s, summary.stop_reason)
        return summary

    def describe(self) -> int | None:
        """Settle tenant and task_data from the request (an items file, an existing row, the
        batch a retry names); returns the id of the batch a retry names, if any."""
        request = self.request
        if request.items_file is not None:
            if request.batch_id is not None or request.task_data is not None:
                raise InvalidItems("give the items inline, in a file, or as a batch id: one of them")
            items = items_from_file(self.settings, self.batch_type, request.items_file)
            self.task_data = {self.batch_type.staged_as or "items": items}
            self.source = f"file:{os.path.basename(request.items_file)}"
        if request.batch_id is not None:
            row = describe_batch(request.batch_id, self.batch_type.name)
            if self.tenant_id is not None and self.tenant_id != row.tenant_id:
                raise BatchError(
                    f"batch {request.batch_id} belongs to tenant {row.tenant_id}, not tenant {self.tenant_id}"
                )
            self.tenant_id, self.task_data = row.tenant_id, row.task_data
        retry_of = _retry_source(self.task_data)
        if self.tenant_id is None and retry_of is not None:  # a retry runs for the tenant of the batch it retries
            self.tenant_id = self._tenant_of(retry_of)  # (open_batch refuses a retry of another tenant's batch)
        if self.tenant_id is None:
            raise BatchError("give a tenant id (or the id of a batch to resume)")
        return retry_of

    async def open(self, retry_of: int | None) -> OpenedBatch:
        """Under the lease: collect the items (types that list them), then validate, claim the
        row and write its detail rows (``open_batch``, which also decides whether it resumes)."""
        request, batch_type = self.request, self.batch_type
        collected, collect_error = None, None
        if batch_type.collect is not None and retry_of is None and not (
            request.batch_id is not None and self._counts(request.batch_id)["total"]
        ):
            try:
                collected = await batch_type.collect(self.settings, self.tenant_id, self.task_data or {})
            except ServiceError as exc:  # the outside service failed: a failed batch, resumable
                collect_error = f"could not collect the items: {exc.reason}"
        # In a worker thread: the loop meanwhile tags the run (see ``execute``).
        return await asyncio.to_thread(
            open_batch, batch_type.name, self.tenant_id, self.task_data,
            task_name=request.task_name or f"{batch_type.title} (tenant {self.tenant_id})",
            create_admin_id=request.create_admin_id, batch_id=request.batch_id, flow_run_id=self.flow_run_id,
            takeover=request.takeover, collected=collected, collect_error=collect_error, source=self.source,
        )

    @property
    def mode(self) -> str:
        """How the items run: ``chunks of 250[, 2 item processes]`` or ``task per item``."""
        mode = f"chunks of {self.chunk_size}" if self._chunked else "task per item"
        return mode + (f", {self.settings.item_processes} item processes" if self.items is not None else "")

    async def process_pending(self, artifacts: BatchArtifacts) -> tuple[str, str | None, FlushStats]:
        """Run every pending item; return (final status, reason, mirror stats).

        Raises StaleFence / LockLost when another run took the batch over: then we write nothing.
        """
        opened, settings = self.opened, self.settings
        scope = BatchScope(opened.batch_id, self.tenant_id)
        self.mirror = MirrorWriter(
            self.engine, scope, opened.fence, apply=self.batch_type.apply, on_stop=self._mirror_stop,
            interval=settings.flush_interval_s, max_items=settings.flush_max_items,
            heartbeat_s=settings.heartbeat_interval_s,
        )
        token_store = DbTokenStore(self.engine)
        # The first page (small: it is all that stands before the first item) and its credentials
        # are read in a worker thread while the handler's state, the clients and the limit are set up.
        first = asyncio.create_task(self._page(token_store, 0, FIRST_PAGE))
        try:
            return await self._process(artifacts, token_store, first)
        finally:
            await _cancelled(first)  # only when something failed before the feed took it

    async def _process(
        self, artifacts: BatchArtifacts, token_store: DbTokenStore, first: asyncio.Task
    ) -> tuple[str, str | None, FlushStats]:
        opened, settings, mirror = self.opened, self.settings, self.mirror
        state = None
        if self.batch_type.prepare is not None:  # per-run state for the handler, read in one transaction
            bare = ItemContext(self.tenant_id, opened.batch_id, self.batch_type.name, settings, self.engine)
            state = await asyncio.to_thread(run_transaction, self.engine, lambda s: self.batch_type.prepare(s, bare))
        async with AsyncExitStack() as clients:  # the batch's long-lived HTTP clients, bound to this loop
            platform = kubo = None
            if self.batch_type.uses_platform:
                platform = await clients.enter_async_context(PlatformClient.from_settings(settings, token_store))
            if self.batch_type.uses_kubo:
                kubo = await clients.enter_async_context(KuboClient.from_settings(settings, self.tenant_id))
            self.ctx = ItemContext(
                self.tenant_id, opened.batch_id, self.batch_type.name, settings, self.engine, platform, kubo, state
            )
            if self._in_item_processes:
                try:
                    self.items = await clients.enter_async_context(await ItemProcesses.start(
                        self.batch_type.name, self.tenant_id, opened.batch_id, opened.fence, settings.item_processes,
                        settings,
                    ))
                    self.items.on_stop = self._mirror_stop
                except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
                    self.log.warning("batch %s: the item processes did not start (%s); the items run in this "
                                     "process", opened.batch_id, exc)
            limits = LimitFollower(self.tenant_id, self.batch_type.name, settings, self.log)
            self.limit = limits.limiter
            if self.items is not None:  # they hold their shares of the limit themselves
                limits.elsewhere = lambda: self.items.in_use
            # The key's Prefect limit (or the configured default), then polled; meanwhile the mirror
            # looks for a cancel that came between the claim and now (then nothing starts).
            limit, _ = await asyncio.gather(limits.start(), mirror.check())
            if self.items is not None:
                self.items.resize(self.limit.size)
            current = RUN.set(self)  # the item tasks started from here on (copies of this context) find this run
            flusher = asyncio.create_task(mirror.run())
            watcher = asyncio.create_task(self.watch())
            shower = asyncio.create_task(artifacts.follow(self._recorded))
            self.log.info(
                "batch %s: %s pending of %s items, %s, at most %s in flight",
                opened.batch_id, opened.pending, opened.total, self.mode, limit,
            )
            try:
                with quiet_gc():  # no stop-the-world collection of Prefect's heap while items run
                    await self.feed(token_store, first)
            finally:
                watcher.cancel()
                await mirror.close(self.outage)
                await artifacts.stop_following(shower)
                flusher.cancel()
                await limits.close()
                RUN.reset(current)
        if mirror.stale:
            raise StaleFence(opened.batch_id, opened.fence)
        if self.lease.lost:
            raise LockLost(self.lease.key)
        if self.stop_reason == st.CANCELLED:
            return st.CANCELLED, None, mirror.stats
        if self.stop_reason is not None or mirror.error is not None:
            reason = self.stop_reason or f"database unavailable: {type(mirror.error).__name__}"
            return st.FAILED, reason, mirror.stats
        return st.COMPLETED, None, mirror.stats

    async def close(self, status: str, reason: str | None) -> dict[str, Any]:
        """Final state and counters from a recount, waiting out a database outage."""
        opened = self.opened
        return await self.outage.wait_out(
            opened.batch_id, "closing the batch", lambda: close_batch(opened.batch_id, opened.fence, status, reason),
        )

    # -- stopping

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str, who: str | None = None) -> None:
        """Start no further item (the first reason wins); ``who`` cancelled is logged once."""
        if self.stop_reason is not None:
            return
        if who is not None:
            self.log.warning("batch %s %s", self.opened.batch_id, who)
        self.stop_reason = reason
        self.limit.open()  # waiters (even on a paused limit) wake, see the stop, start nothing
        if self.items is not None:
            self.items.stop()

    def _mirror_stop(self, reason: str) -> None:
        """A flush found the row cancelled by the admin panel, or the fence stale."""
        self.stop(reason, CANCELLED_BY_PANEL if reason == st.CANCELLED else None)

    async def watch(self) -> None:
        """Stop the feed on cancellation (Prefect or admin panel), a lost lease or fence, a long DB outage."""
        settings, mirror = self.settings, self.mirror
        last_poll = last_log = time.monotonic()
        while not self.stopped:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            if self.items is not None:  # the limit may have changed: the helpers' shares follow it
                self.items.resize(self.limit.size)
            if self.lease.lost:
                self.stop("lease lost")
            elif mirror.stale:
                self.stop(TAKEN_OVER)
            elif mirror.cancel_requested:
                self.stop(st.CANCELLED, CANCELLED_BY_PANEL)
            if mirror.error is not None and self.outage.exhausted(mirror.error_since, now):
                self.stop(f"database unavailable for {settings.db_outage_budget_s:.0f}s")
            if self.flow_run_id and now - last_poll >= settings.cancel_poll_s:
                last_poll = now
                if not self.stopped and await _is_cancelling(self.flow_run_id):
                    self.stop(st.CANCELLED, CANCELLED_FROM_PREFECT)
            if now - last_log >= settings.progress_log_s:
                last_log = now
                self.log.info(
                    "batch %s progress: %s/%s recorded", self.opened.batch_id, self._recorded(), self.opened.pending
                )

    def _recorded(self) -> int:
        """Items recorded so far by this run (its mirror and its helper processes')."""
        return self.mirror.stats.moved + (self.items.moved if self.items is not None else 0)

    # -- feeding items

    @property
    def _chunked(self) -> bool:
        return self.opened.pending > self.settings.chunk_threshold

    @property
    def chunk_size(self) -> int:
        """Items per chunk task run: ``BATCH_CHUNK_SIZE``, or more when the batch would otherwise
        need more than ``BATCH_CHUNKS_MAX`` of them."""
        return max(self.settings.chunk_size, -(-self.opened.pending // self.settings.chunks_max))

    @property
    def _in_item_processes(self) -> bool:
        settings = self.settings
        return (settings.item_processes > 0 and self.batch_type.runs_in_item_processes and self._chunked
                and self.opened.pending >= settings.item_processes_min_items)

    async def feed(self, token_store: DbTokenStore, first: asyncio.Task) -> None:
        """Hand pending items to task runs page by page, never more than the limit at once.

        ``first`` reads the first page; each page's successor is read (with its credentials)
        while the page runs, and a page's credentials are dropped once its last job is done.
        """
        settings = self.settings
        outage_stop = f"database unavailable for {settings.db_outage_budget_s:g}s"
        in_flight: set[asyncio.Task] = set()
        # Enough chunks in flight to keep every slot of the limit busy, and no more (the limit may
        # change while the batch runs: the chunk slots follow it).
        chunk_slots = ResizableLimiter(1)
        reading: asyncio.Task | None = first
        size = FIRST_PAGE
        try:
            while not self.stopped and reading is not None:
                try:
                    page = await reading
                except DatabaseUnavailable:
                    self.stop(outage_stop)
                    break
                reading = None
                if len(page) == size:  # maybe more: read the next page while this one runs
                    size = min(PAGE, size * 4)
                    reading = asyncio.create_task(self._page(token_store, page[-1][0], size))
                ids = [i for i, _ in page]
                # _page leaves the credentials to item processes (they read their chunks'); if
                # those did not start, the items run here and need the page's credentials.
                if self.batch_type.uses_platform and self._in_item_processes and self.items is None:
                    try:
                        await self.outage.wait_out(
                            self.opened.batch_id, "loading credentials", lambda: token_store.preload(ids),
                            blocking=True,
                        )
                    except DatabaseUnavailable:
                        self.stop(outage_stop)
                        break
                jobs = _PageJobs(ids, token_store if self.batch_type.uses_platform and self.items is None else None)
                if self._chunked:
                    # One chunk queued ahead; two per helper process (each works on its own share of the limit).
                    queued = 1 if self.items is None else 2 * self.items.alive
                    for start in range(0, len(page), self.chunk_size):
                        part = page[start : start + self.chunk_size]
                        chunk_slots.resize(-(-self.limit.size // self.chunk_size) + queued)
                        await chunk_slots.acquire()
                        if self.stopped:
                            chunk_slots.release()
                            break
                        _spawn(in_flight, self._run_chunk(part), chunk_slots, jobs)
                else:
                    for item_id, item_data in page:
                        await self.limit.acquire()
                        if self.stopped:
                            self.limit.release()
                            break
                        _spawn(in_flight, self._run_item(item_id, item_data), self.limit, jobs)
                jobs.dispatched()
        except BaseException:
            self.stop("internal error")  # start nothing new; the ones running finish below
            raise
        finally:
            await _cancelled(reading)
            # Always wait for the items in flight: leaving them running would close the HTTP client
            # under them and record them failed (found by tests/faults, on a database outage).
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _page(self, token_store: DbTokenStore, after: int, size: int) -> list[tuple[int, dict | None]]:
        """Up to ``size`` pending items after item ``after``, their credentials in ``token_store``
        (both read in worker threads, waiting out a database outage)."""
        batch_id = self.opened.batch_id
        page = await self.outage.wait_out(
            batch_id, "reading pending items",
            lambda: run_transaction(self.engine, lambda s: pending_items(s, batch_id, after, size)),
            blocking=True,
        )
        if page and self.batch_type.uses_platform and not self._in_item_processes:
            ids = [i for i, _ in page]
            await self.outage.wait_out(batch_id, "loading credentials", lambda: token_store.preload(ids), blocking=True)
        return page

    async def _run_item(self, item_id: int, item_data: dict | None) -> None:
        try:  # a failed item is a Failed task run (its outcome already recorded): not an error here
            state = await process_item(self.batch_type.name, self.opened.batch_id, item_id, item_data,
                                       return_state=True)
            error = await task_failure(state)
        except Exception as exc:
            error = type(exc).__name__
        if error is not None:  # the task run itself failed (not the item's work)
            self.mirror.add(ItemOutcome.failed(item_id, f"internal error: {error}"))

    async def _run_chunk(self, part: list) -> None:
        first, last = self.stage_chunk(part)
        try:  # a chunk with failed items ends Failed with its counts: not an error here
            state = await process_chunk(self.batch_type.name, self.opened.batch_id, first, last, return_state=True)
            error = await task_failure(state)
        except Exception as exc:
            error = type(exc).__name__
        if error is not None:
            # Items that already have an outcome keep it (the mirror moves only pending rows).
            self.take_chunk(first)
            for item_id, _ in part:
                self.mirror.add(ItemOutcome.failed(item_id, f"internal error: {error}"))

    # -- what the item tasks call (tasks.items.ItemRunner)

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
        outcome = await self.batch_type.outcome_of(self.ctx, item_id, item_data)
        self.mirror.add(outcome)
        return outcome

    async def run_chunk(self, first_id: int) -> dict[str, int]:
        """The staged chunk's items, each under a slot of the limit, here or in a helper process;
        counts by status (``not_started``: the batch stopped before the item; ``unknown``: the
        item process handling the chunk exited)."""
        items = self.take_chunk(first_id)
        if self.items is not None:
            try:
                return await self.items.run_chunk(first_id, items)
            except ItemProcessExited:  # its items without a recorded outcome stay pending, like a killed worker's
                self.stop("internal error: an item process exited (its unrecorded items stay pending)")
                return {"unknown": len(items)}

        async def one(item_id: int, item_data: dict | None) -> ItemOutcome | None:
            async with self.limit:
                return await self.process(item_id, item_data)

        counts = {"success": 0, "failed": 0, "skipped": 0, "not_started": 0}
        for outcome in await asyncio.gather(*(one(i, d) for i, d in items)):
            counts[outcome.status if outcome else "not_started"] += 1
        return counts

    # -- reads

    def _counts(self, batch_id: int | None = None) -> dict[str, int]:
        batch_id = self.opened.batch_id if batch_id is None else batch_id
        return counts_dict(run_transaction(self.engine, lambda s: recount(s, batch_id)))

    def _tenant_of(self, batch_id: int) -> int:
        """The tenant of a batch a retry names (read only: the old batch is never written here)."""
        row = run_transaction(self.engine, lambda s: get_batch(s, batch_id))
        if row is None or row.delete_time is not None:
            raise UnknownBatch(batch_id)
        return int(row.tenant_id)


class _PageJobs:
    """The jobs (chunk or item task runs) started from one page: once the page is fully handed
    out and its last job is done, its credentials leave the token store (memory stays bounded
    by the pages in flight, whatever the limit)."""

    __slots__ = ("ids", "running", "handed_out", "store")

    def __init__(self, ids: list[int], store: DbTokenStore | None) -> None:
        self.ids, self.store, self.running, self.handed_out = ids, store, 0, False

    def started(self) -> None:
        self.running += 1

    def done(self) -> None:
        self.running -= 1
        self._forget()

    def dispatched(self) -> None:
        self.handed_out = True
        self._forget()

    def _forget(self) -> None:
        if self.handed_out and not self.running and self.store is not None:
            self.store.forget(self.ids)
            self.store = None


def _spawn(in_flight: set[asyncio.Task], coro, slot: ResizableLimiter, page: _PageJobs) -> None:
    job = asyncio.create_task(coro)
    in_flight.add(job)
    page.started()

    def done(t: asyncio.Task) -> None:
        in_flight.discard(t)
        slot.release()
        page.done()

    job.add_done_callback(done)


async def _cancelled(task: asyncio.Task | None) -> None:
    """Cancel ``task`` (a page being read ahead) and wait for it to end; its errors are moot."""
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        await asyncio.gather(task, return_exceptions=True)


async def _is_cancelling(flow_run_id: str) -> bool:
    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
    except Exception:  # the API being slow must not stop the batch
        return False
    return bool(run.state and (run.state.is_cancelling() or run.state.is_cancelled()))


def _retry_source(task_data: dict[str, Any] | None) -> int | None:
    """The batch whose failed items this request retries; a malformed link is refused later, by open_batch."""
    try:
        return retry_source(task_data)
    except BatchError:
        return None


def _flow_run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
