"""A big batch's chunks handled in helper processes: its items on more than one core.

One event loop makes every platform call of a batch, so with short calls (a few ms) a batch is
bound by the CPU of one core (docs/benchmarks.md). With ``BATCH_ITEM_PROCESSES = P`` a run of
at least ``BATCH_ITEM_PROCESSES_MIN_ITEMS`` pending items, of a type that only calls the platform
and keeps no per-run state (``BatchType.runs_in_item_processes``), starts P helper processes
(``python -m batchlib.item_processes``). The run keeps what is per batch: the chunk task runs
Prefect shows, the (tenant, type) limit, stopping and cancelling, the final recount. A helper
takes whole chunks: it reads a chunk's credentials from the database in one query when the
chunk arrives (so no token crosses a pipe, and each account's are read by one process only),
calls the platform for each item with its own event loop (uvloop) and platform client, and records the outcomes with its own mirror writer under the run's
fence, exactly as the run's would (one fenced transaction per flush: rows, counters, the type's
side effects). So the run's loop spends nothing per item.

**One limit.** The run splits its limit's size between the live helpers (``resize``: the
share of each is sent again whenever the limit changes, 0 pauses them) and queues two chunks
per helper ahead, so a helper finishing a chunk's last items already has the next one.

Wire: frames of ``pickle`` (4-byte big-endian length first) over the helper's stdin/stdout;
its stdout carries nothing else (its logging goes to stderr, which it shares with the run).
The run sends ``("chunk", (first_id, items))``, ``("slots", n)``, ``("stop", None)`` (start
nothing more) and ``("close", None)``; a helper sends ``("ready",
pid)`` once, ``("done", [(first_id, counts), ...])`` (coalesced per turn of its loop),
``("moved", n)`` after each flush that recorded rows (progress), ``("in_use", n)`` when its
calls in flight changed (at most every ``REPORT_S``: the limit's figure in Prefect) and
``("stop", reason)`` when its mirror found the batch cancelled by the admin panel or taken over.

A helper that exits (killed, out of memory) fails nothing: its items in flight and the outcomes
it had not flushed yet stay ``pending``, and the run stops starting items, as a killed worker's
would (the batch ends failed; a resume finishes it). A helper whose run went away (its stdin
closed) starts nothing more, records what it finished and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
from typing import Any

from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings, get_settings

__all__ = ["ItemProcessExited", "ItemProcesses", "main"]

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
FRAME_MAX = 256 * 1024 * 1024
START_TIMEOUT_S = 60.0
REPORT_S = 0.5
CLOSE_TIMEOUT_S = 120.0  # a helper records its last outcomes before it exits (through a short outage too)
Message = tuple[str, Any]


class ItemProcessExited(Exception):
    """A helper process exited with chunks of this run unfinished."""


Counts = dict[str, int]


async def read_frame(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None at the end of the stream."""
    try:
        size = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
        if size > FRAME_MAX:
            raise ValueError(f"frame of {size} bytes")
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None


def frame(message: Message) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


class _Outbox:
    """Messages of one kind gathered during a turn of the event loop, sent as one frame."""

    def __init__(self, writer: asyncio.StreamWriter, kind: str) -> None:
        self._writer, self._kind = writer, kind
        self._parts: list[Any] = []

    def add(self, part: Any) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self.flush)
        self._parts.append(part)

    def flush(self) -> None:
        if self._parts and not self._writer.is_closing():
            self._writer.write(frame((self._kind, self._parts)))
        self._parts = []


# -- the run's side ------------------------------------------------------------------------------


class _Helper:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: dict[int, tuple[int, asyncio.Future[Counts | None]]] = {}  # first id -> (items, answer)
        self.alive = True
        self.slots: int | None = None  # the share of the limit last sent
        self.in_use = 0  # its calls in flight, as it last reported
        self.reader: asyncio.Task | None = None

    @property
    def load(self) -> int:
        """Items sent and not answered yet."""
        return sum(n for n, _ in self.waiting.values())

    def send(self, message: Message) -> None:
        if self.alive and not self.proc.stdin.is_closing():
            self.proc.stdin.write(frame(message))


class ItemProcesses:
    """P helper processes handling chunks of one batch (see the module's docstring)."""

    def __init__(self, helpers: list[_Helper]) -> None:
        self._helpers = helpers
        self.moved = 0  # rows the helpers' mirrors recorded so far
        self.on_stop = lambda reason: None  # a helper's mirror found the batch cancelled or taken over

    @classmethod
    async def start(
        cls, task_type: str, tenant_id: int, batch_id: int, fence: int, processes: int,
        settings: Settings | None = None,
    ) -> ItemProcesses:
        """Start ``processes`` helpers and wait until each has its clients (or raise RuntimeError)."""
        settings = settings or get_settings()
        helpers: list[_Helper] = []
        try:
            for _ in range(processes):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "batchlib.item_processes", task_type, str(tenant_id), str(batch_id),
                    str(fence), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=FRAME_MAX,
                )
                helpers.append(_Helper(proc))
            for helper in helpers:
                ready = await asyncio.wait_for(read_frame(helper.proc.stdout), START_TIMEOUT_S)
                if ready is None or ready[0] != "ready":
                    raise RuntimeError(f"an item process did not start (exit code {await helper.proc.wait()})")
        except BaseException:
            for helper in helpers:
                with contextlib.suppress(ProcessLookupError):
                    helper.proc.kill()
            raise
        pool = cls(helpers)
        for helper in helpers:
            helper.reader = asyncio.create_task(pool._read(helper))
        return pool

    @property
    def alive(self) -> int:
        return sum(helper.alive for helper in self._helpers)

    @property
    def in_use(self) -> int:
        """Slots of the limit the live helpers hold (as they last reported, every ``REPORT_S``)."""
        return sum(helper.in_use for helper in self._helpers if helper.alive)

    def resize(self, size: int) -> None:
        """Split a limit of ``size`` slots between the live helpers (sent only when a share changes)."""
        live = [h for h in self._helpers if h.alive]
        for n, helper in enumerate(live):
            share = size // len(live) + (1 if n < size % len(live) else 0)
            if share != helper.slots:
                helper.slots = share
                helper.send(("slots", share))

    async def run_chunk(self, first_id: int, items: list[tuple[int, dict[str, Any] | None]]) -> Counts:
        """Have the least busy helper handle a chunk; its counts by status once every item has an
        outcome (or did not start: the batch stopped). Raises ``ItemProcessExited`` when the
        helper exited before answering or no helper is left."""
        live = [h for h in self._helpers if h.alive]
        if not live:
            raise ItemProcessExited("every item process exited")
        helper = min(live, key=lambda h: h.load)
        answer = asyncio.get_running_loop().create_future()
        helper.waiting[first_id] = (len(items), answer)
        helper.send(("chunk", (first_id, items)))
        counts = await answer
        if counts is None:
            raise ItemProcessExited(f"item process {helper.proc.pid} exited")
        return counts

    def stop(self) -> None:
        """The batch stopped: the helpers start no further item (those running finish)."""
        for helper in self._helpers:
            helper.send(("stop", None))

    async def _read(self, helper: _Helper) -> None:
        try:
            while (message := await read_frame(helper.proc.stdout)) is not None:
                kind, body = message
                if kind == "done":
                    for first_id, counts in body:
                        _, answer = helper.waiting.pop(first_id, (0, None))
                        if answer is not None and not answer.done():
                            answer.set_result(counts)
                elif kind == "moved":
                    self.moved += body
                elif kind == "in_use":
                    helper.in_use = body
                elif kind == "stop":
                    self.on_stop(body)
        except Exception:
            log.exception("reading from item process %s", helper.proc.pid)
        finally:
            helper.alive = False
            code = await helper.proc.wait()
            if helper.waiting:
                log.error("item process %s exited (code %s) with %s item(s) of %s chunk(s) unfinished: "
                          "those without a recorded outcome stay pending",
                          helper.proc.pid, code, helper.load, len(helper.waiting))
            for _, answer in helper.waiting.values():
                if not answer.done():
                    answer.set_result(None)
            helper.waiting.clear()

    async def aclose(self) -> None:
        """Let each helper finish what it was sent and record it, then wait for it to exit."""
        for helper in self._helpers:
            helper.send(("close", None))
            if helper.alive:
                with contextlib.suppress(ConnectionError):
                    await helper.proc.stdin.drain()
        for helper in self._helpers:
            try:
                await asyncio.wait_for(asyncio.shield(helper.reader), CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    helper.proc.kill()
                await helper.reader

    async def __aenter__(self) -> ItemProcesses:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the helper's side ---------------------------------------------------------------------------


class _Worker:
    """A helper's state: its clients, its share of the limit, its mirror writer."""

    def __init__(self, batch_type, ctx, tokens, mirror, slots, writer: asyncio.StreamWriter) -> None:
        self.batch_type, self.ctx, self.tokens, self.mirror, self.slots = batch_type, ctx, tokens, mirror, slots
        self.writer = writer
        self.done = _Outbox(writer, "done")
        self.stopped = False
        self.chunks: set[asyncio.Task] = set()

    def send(self, message: Message) -> None:
        if not self.writer.is_closing():
            self.done.flush()
            self.writer.write(frame(message))

    def stop(self) -> None:
        self.stopped = True
        self.slots.open()  # waiters see the stop and start nothing

    def start_chunk(self, first_id: int, items: list[tuple[int, dict[str, Any] | None]]) -> None:
        job = asyncio.create_task(self._chunk(first_id, items))
        self.chunks.add(job)
        job.add_done_callback(self.chunks.discard)

    async def _chunk(self, first_id: int, items: list[tuple[int, dict[str, Any] | None]]) -> None:
        ids = [item_id for item_id, _ in items]
        try:  # the chunk's credentials in one query (the chunks queued ahead read theirs meanwhile)
            await asyncio.to_thread(self.tokens.preload, ids)
        except Exception as exc:  # the database is down: each item reads its own (the run waits out the outage)
            log.warning("could not preload %s accounts' credentials: %s", len(ids), type(exc).__name__)
        counts: Counts = {"success": 0, "failed": 0, "skipped": 0, "not_started": 0}
        try:
            for outcome in await asyncio.gather(*(self._one(i, d) for i, d in items)):
                counts[outcome.status if outcome else "not_started"] += 1
        finally:
            self.tokens.forget(ids)
        self.done.add((first_id, counts))

    async def report_in_use(self) -> None:
        """Tell the run how many slots of its share are busy, when that changed."""
        last = 0
        while True:
            await asyncio.sleep(REPORT_S)
            if self.slots.in_use != last:
                last = self.slots.in_use
                self.send(("in_use", last))

    async def _one(self, item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome | None:
        async with self.slots:
            if self.stopped:
                return None
            outcome = await self.batch_type.outcome_of(self.ctx, item_id, item_data)
            self.mirror.add(outcome)
            return outcome


async def _serve(task_type: str, tenant_id: int, batch_id: int, fence: int, out_fd: int) -> None:
    from batchlib.batch_types import BatchScope, get_batch_type
    from batchlib.item_context import ItemContext
    from batchlib.limiter import ResizableLimiter
    from batchlib.mirror_writer import MirrorWriter
    from batchlib.outage import OutagePolicy
    from batchlib.platform_client import PlatformClient
    from batchlib.token_store import DbTokenStore
    from db import get_engine

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=FRAME_MAX)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    settings = get_settings()
    engine = get_engine(settings=settings)
    batch_type = get_batch_type(task_type)
    tokens = DbTokenStore(engine)

    def on_stop(reason: str) -> None:  # the mirror found the batch cancelled or taken over
        worker.stop()
        worker.send(("stop", reason))

    mirror = MirrorWriter(
        engine, BatchScope(batch_id, tenant_id), fence, apply=batch_type.apply, on_stop=on_stop,
        interval=settings.flush_interval_s, max_items=settings.flush_max_items,
        heartbeat_s=settings.heartbeat_interval_s,
    )
    # Called in the flush's worker thread: the pipe is the loop's.
    mirror.on_progress = lambda moved: loop.call_soon_threadsafe(worker.send, ("moved", moved))

    async with PlatformClient.from_settings(settings, tokens) as platform:
        ctx = ItemContext(tenant_id, batch_id, task_type, settings, engine, platform)
        worker = _Worker(batch_type, ctx, tokens, mirror, ResizableLimiter(0), writer)
        flusher = asyncio.create_task(mirror.run())
        reporter = asyncio.create_task(worker.report_in_use())
        writer.write(frame(("ready", os.getpid())))
        while (message := await read_frame(reader)) is not None:
            kind, body = message
            if kind == "chunk":
                worker.start_chunk(*body)
            elif kind == "slots":
                worker.slots.resize(body)
            elif kind == "stop":
                worker.stop()
            elif kind == "close":
                break
        else:  # the run went away without closing: start nothing more, record what was done
            worker.stop()
        if worker.chunks:
            await asyncio.gather(*worker.chunks)
        await mirror.close(OutagePolicy(settings.db_outage_budget_s))
        flusher.cancel()
        reporter.cancel()
        worker.send(("in_use", 0))
        worker.done.flush()
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    writer.close()
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    task_type, tenant_id, batch_id, fence = (argv or sys.argv[1:])[:4]
    out_fd = os.dup(1)
    os.dup2(2, 1)  # only frames go to the run: a stray print lands in the shared stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"item process {os.getpid()}: %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        run = asyncio.run
    else:
        run = uvloop.run
    run(_serve(task_type, int(tenant_id), int(batch_id), int(fence), out_fd))


if __name__ == "__main__":
    main()
