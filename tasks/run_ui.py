"""What a batch run shows in the Prefect UI: tags, item states and artifacts.

    tag_run(tenant, type)        -> the run carries tenant-<id>, <type>, batch (however it started)
    item_state / chunk_state     -> a failed item is a Failed task run with its reason as message
    BatchArtifacts               -> batch-<id>-progress (updated at most every 2 s, when it moved),
                                    batch-<id>-failures (table) and batch-<id>-summary (markdown)

Every call here is a few milliseconds of API time, made per batch or per 2 s, never per item,
and none of them can fail or delay a batch: an API error is logged once and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from prefect.artifacts import MarkdownArtifact, ProgressArtifact, TableArtifact, aupdate_progress_artifact
from prefect.client.orchestration import get_client
from prefect.states import Completed, Failed, State

from batchcore.outcomes import ItemOutcome
from db import counters, run_transaction
from db.reports import FailureReport, failure_report

__all__ = [
    "tag_run", "batch_tags", "item_state", "chunk_state", "task_failure", "quiet_returned_failures",
    "BatchArtifacts", "FAILURES_SHOWN",
]

log = logging.getLogger(__name__)

FAILURES_SHOWN = 50  # failed items listed in the failures table


def batch_tags(tenant_id: int, task_type: str) -> list[str]:
    return ["batch", task_type, f"tenant-{tenant_id}"]


async def tag_run(flow_run_id: str | None, tenant_id: int, task_type: str) -> None:
    """Add the batch's tags to its flow run (a UI or CLI run has only the deployment's, or none)."""
    if flow_run_id is None:
        return
    try:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            tags = list(dict.fromkeys([*(run.tags or []), *batch_tags(tenant_id, task_type)]))
            if tags != list(run.tags or []):
                await client.update_flow_run(flow_run_id, tags=tags)
    except Exception as exc:  # tags are a convenience: never fail a batch over them
        log.warning("could not tag flow run %s: %s", flow_run_id, type(exc).__name__)


# -- task-run states ---------------------------------------------------------------------------

def item_state(outcome: ItemOutcome | None) -> ItemOutcome | None | State:
    """What a per-item task run returns: its outcome, or a Failed state naming the reason (no
    traceback, no retry: the item's work is done and recorded; only its result was a failure)."""
    if outcome is not None and outcome.status == "failed":
        return Failed(message=f"item {outcome.item_id} failed: {outcome.error}", data=outcome)
    return outcome


def chunk_state(counts: dict[str, int]) -> State:
    """A chunk task run's final state: ``250 items: 247 succeeded, 3 failed``; Failed when any failed."""
    total = sum(counts.values())
    message = f"{total} items: {counts.get('success', 0)} succeeded, {counts.get('failed', 0)} failed"
    for key, label in (("skipped", "skipped"), ("not_started", "not started (batch stopped)"),
                       ("unknown", "not known here (their item process exited; the mirror has what it recorded)")):
        if counts.get(key):
            message += f", {counts[key]} {label}"
    return (Failed if counts.get("failed") or counts.get("unknown") else Completed)(message=message, data=counts)


async def task_failure(state: State) -> str | None:
    """None when the task run did its work (even if items failed); else the error's type name."""
    if not state.is_failed():
        return None
    result = await state.aresult(raise_on_failure=False)
    return type(result).__name__ if isinstance(result, BaseException) else None


class _ReturnedFailure(logging.Filter):
    """Drops the task engine's "Task run failed with state: ..." record for a task that returned
    a Failed state (no exception: it would print "NoneType: None"). The run's "Finished in state
    Failed('item 700003 failed: ...')" line stays: one line per failed item, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str) and record.msg.startswith("Task run failed with state:")
            and (not record.exc_info or record.exc_info[0] is None)
        )


def quiet_returned_failures() -> None:
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _ReturnedFailure) for f in logger.filters):
        logger.addFilter(_ReturnedFailure())


# -- artifacts ---------------------------------------------------------------------------------

class BatchArtifacts:
    """The batch's artifacts, keyed by batch id (a resume adds a version under the same keys)."""

    def __init__(self, engine: Any, batch_id: int, task_type: str, tenant_id: int, *, interval_s: float = 2.0) -> None:
        self._engine = engine
        self.batch_id, self.task_type, self.tenant_id = batch_id, task_type, tenant_id
        self._interval_s = interval_s
        self._progress_id = None
        self._shown: tuple[int, ...] | None = None
        self._warned = False
        self._done = asyncio.Event()
        self._client = None  # one API client for the batch's artifact calls (a fresh one per call costs ~4x)
        self.calls = 0
        self.api_s = 0.0  # time spent in artifact API calls (docs/operations.md quotes it)

    def key(self, what: str) -> str:
        return f"batch-{self.batch_id}-{what}"

    async def _api(self, fn, *args: Any, **kwargs: Any) -> Any:
        """``fn(client, ...)``; errors are logged once and swallowed."""
        started = time.perf_counter()
        try:
            if self._client is None:
                self._client = await get_client().__aenter__()
            return await fn(self._client, *args, **kwargs)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                log.warning("batch %s: Prefect artifact not written (%s)", self.batch_id, type(exc).__name__)
            return None
        finally:
            self.calls += 1
            self.api_s += time.perf_counter() - started

    def _describe(self, counts: Any) -> str:
        return (
            f"batch {self.batch_id} ({self.task_type}, tenant {self.tenant_id}): "
            f"{counts.processed}/{counts.total} processed, {counts.success} succeeded, {counts.failed} failed"
        )

    async def refresh(self) -> None:
        """Create or update the progress artifact, if the counters moved since it was last shown."""
        try:  # one SELECT by primary key: the counters the admin panel shows
            counts = await asyncio.to_thread(run_transaction, self._engine, lambda s: counters(s, self.batch_id))
        except Exception:  # the mirror is briefly unreachable: the next tick shows it
            return
        shown = (counts.total, counts.processed, counts.success, counts.failed)
        if shown == self._shown:
            return
        progress = 100.0 * counts.processed / counts.total if counts.total else 100.0
        description = self._describe(counts)
        if self._progress_id is None:
            created = await self._api(lambda client: ProgressArtifact(
                key=self.key("progress"), description=description, progress=progress).acreate(client))
            self._progress_id = created.id if created is not None else None
        else:
            await self._api(lambda client: aupdate_progress_artifact(
                self._progress_id, progress, description=description, client=client))
        self._shown = shown

    async def follow(self, moved: Callable[[], int]) -> None:
        """Create the progress artifact at once, then refresh it every ``interval_s`` while
        ``moved()`` (rows the mirror recorded) changes; runs beside the items until ``stop_following``,
        so no artifact call delays an item."""
        last = None
        while not self._done.is_set():
            now = moved()
            if now != last:
                last = now
                await self.refresh()
            try:
                await asyncio.wait_for(self._done.wait(), self._interval_s)
            except TimeoutError:
                pass

    async def stop_following(self, follower: asyncio.Task) -> None:
        """Stop ``follow`` after its API call in progress: cancelled midway, a create could reach
        the server and be repeated by ``finish`` (a second progress card; the browser test saw it)."""
        self._done.set()
        try:
            await asyncio.wait_for(follower, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            pass

    async def finish(self, status: str, elapsed_s: float, stop_reason: str | None = None) -> None:
        """Final progress, the failures table (if any failed) and the summary."""
        await self.refresh()
        try:
            report = await asyncio.to_thread(
                run_transaction, self._engine, lambda s: failure_report(s, self.batch_id, FAILURES_SHOWN)
            )
        except Exception as exc:  # the mirror is unreachable: the summary says so
            log.warning("batch %s: failed items not read for the UI (%s)", self.batch_id, type(exc).__name__)
            report = FailureReport([], [])
        counts = self._shown
        if report.first:
            rows = [{"account_id": item_id, "reason": reason} for item_id, reason in report.first]
            shown = f"the first {len(rows)} of {report.failed}" if report.failed > len(rows) else f"all {len(rows)}"
            await self._api(lambda client: TableArtifact(
                table=rows, key=self.key("failures"),
                description=f"batch {self.batch_id}: {shown} failed items (la_batch_task_detail)",
            ).acreate(client))
        markdown = self._summary(status, elapsed_s, counts, report, stop_reason)
        await self._api(lambda client: MarkdownArtifact(
            markdown=markdown, key=self.key("summary"), description=f"batch {self.batch_id} {status}",
        ).acreate(client))
        await self.close()
        log.debug("batch %s: %s artifact calls, %.1f ms each", self.batch_id, self.calls,
                  1000 * self.api_s / max(self.calls, 1))

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.__aexit__(None, None, None)
            except Exception:  # closing a client of an API that went away
                pass

    def _summary(self, status: str, elapsed_s: float, counts: tuple[int, ...] | None, report: Any,
                 stop_reason: str | None) -> str:
        total, processed, success, failed = counts or (0, 0, 0, 0)
        module = self.task_type
        lines = [
            f"## Batch {self.batch_id}: {status}",
            "",
            f"{self.task_type}, tenant {self.tenant_id}, {elapsed_s:.1f} s",
            "",
            "| total | processed | succeeded | failed | pending |",
            "|---:|---:|---:|---:|---:|",
            f"| {total} | {processed} | {success} | {failed} | {total - processed} |",
        ]
        if stop_reason:
            lines += ["", f"Stopped: {stop_reason}"]
        if report.by_reason:
            lines += ["", "### Failures by reason", "", "| reason | items |", "|---|---:|"]
            lines += [f"| {_cell(reason) or '(none)'} | {n} |" for reason, n in report.by_reason]
            lines += ["", f"Failed items: the `{self.key('failures')}` table artifact, "
                          f"or `la_batch_task_detail` rows with `task_id = {self.batch_id}`."]
        if total - processed:
            lines += ["", "### Finishing the pending items", "",
                      f"`python -m flows.{module} --resume {self.batch_id}`, or a run of the "
                      f"`{module.replace('_', '-')}` deployment with `batch_id = {self.batch_id}`."]
        return "\n".join(lines)


def _cell(text: str) -> str:
    """A reason inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")[:200]
