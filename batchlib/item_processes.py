"""Items handled in helper processes: a big batch's platform calls on more than one core.

One event loop makes every platform call of a batch, so with short calls (a few ms) a batch is
bound by the CPU of one core (docs/benchmarks.md). With ``BATCH_ITEM_PROCESSES = P`` a run of
at least ``BATCH_ITEM_PROCESSES_MIN_ITEMS`` pending items, of a type that only calls the platform
and keeps no per-run state (``BatchType.runs_in_item_processes``), starts P helper processes
(``python -m batchlib.item_processes``). Each has its own event loop (uvloop), platform client
and token store: it reads the credentials from the database itself, so no token crosses a
pipe. The run keeps everything else: the (tenant, type) limit (an item is sent only under a
slot), the chunk task runs Prefect shows, the mirror writer (the batch's only writer, under
its fence), stopping and cancelling. A helper answers with the item's ``ItemOutcome``.

Wire: frames of ``pickle`` (4-byte big-endian length first) over the helper's stdin/stdout;
its stdout carries nothing else (its logging goes to stderr, which it shares with the run).
The run sends ``("items", [(seq, item_id, item_data), ...])``, ``("preload", ids)`` /
``("forget", ids)`` (the run's credential pages, so a helper reads one query per page) and
``("close", None)``; a helper sends ``("ready", pid)`` once and ``("done", [(seq, outcome),
...])``. Messages are coalesced per turn of the event loop on both sides, so one frame carries
many items when the batch is busy.

A helper that exits (killed, out of memory) fails nothing: its items in flight get no
outcome and stay ``pending``, and ``ItemProcessExited`` tells the run to stop starting
items, as a killed worker would (the batch ends failed; a resume finishes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
Message = tuple[str, Any]


class ItemProcessExited(Exception):
    """Every helper process exited: no item can be handled any more."""


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
        self.outbox = _Outbox(proc.stdin, "items")
        self.waiting: dict[int, asyncio.Future[ItemOutcome]] = {}
        self.alive = True
        self.reader: asyncio.Task | None = None

    def send(self, message: Message) -> None:
        if self.alive:
            self.outbox.flush()  # keep the order: items sent before this message go first
            self.proc.stdin.write(frame(message))


class ItemProcesses:
    """P helper processes handling items of one batch; ``handle`` sends one item to the least busy."""

    def __init__(self, helpers: list[_Helper]) -> None:
        self._helpers = helpers
        self._seq = itertools.count()

    @classmethod
    async def start(
        cls, task_type: str, tenant_id: int, batch_id: int, processes: int, settings: Settings | None = None,
    ) -> ItemProcesses:
        """Start ``processes`` helpers and wait until each has its clients (or raise RuntimeError)."""
        settings = settings or get_settings()
        helpers: list[_Helper] = []
        try:
            for _ in range(processes):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "batchlib.item_processes", task_type, str(tenant_id), str(batch_id),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=FRAME_MAX,
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

    async def handle(self, item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome | None:
        """The item's outcome from a helper; None when its helper exited before answering.
        Raises ``ItemProcessExited`` when no helper is left."""
        live = [h for h in self._helpers if h.alive]
        if not live:
            raise ItemProcessExited("every item process exited")
        helper = min(live, key=lambda h: len(h.waiting))
        seq = next(self._seq)
        answer = helper.waiting[seq] = asyncio.get_running_loop().create_future()
        helper.outbox.add((seq, item_id, item_data))
        return await answer

    def preload(self, account_ids: list[int]) -> None:
        """Each helper reads these accounts' credentials in one query before their items arrive."""
        for helper in self._helpers:
            helper.send(("preload", account_ids))

    def forget(self, account_ids: list[int]) -> None:
        for helper in self._helpers:
            helper.send(("forget", account_ids))

    async def _read(self, helper: _Helper) -> None:
        try:
            while (message := await read_frame(helper.proc.stdout)) is not None:
                for seq, outcome in message[1]:
                    answer = helper.waiting.pop(seq, None)
                    if answer is not None and not answer.done():
                        answer.set_result(outcome)
        except Exception:
            log.exception("reading from item process %s", helper.proc.pid)
        finally:
            helper.alive = False
            code = await helper.proc.wait()
            if helper.waiting:
                log.error("item process %s exited (code %s) with %s item(s) unanswered: they stay pending",
                          helper.proc.pid, code, len(helper.waiting))
            for answer in helper.waiting.values():
                if not answer.done():
                    answer.set_result(None)
            helper.waiting.clear()

    async def aclose(self) -> None:
        """Let each helper finish what it was sent, then wait for it to exit."""
        for helper in self._helpers:
            helper.send(("close", None))
            if helper.alive:
                with contextlib.suppress(ConnectionError):
                    await helper.proc.stdin.drain()
        for helper in self._helpers:
            try:
                await asyncio.wait_for(asyncio.shield(helper.reader), 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    helper.proc.kill()
                await helper.reader

    async def __aenter__(self) -> ItemProcesses:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- the helper's side ---------------------------------------------------------------------------


async def _serve(task_type: str, tenant_id: int, batch_id: int, out_fd: int) -> None:
    from batchlib.batch_types import get_batch_type
    from batchlib.item_context import ItemContext
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
    done = _Outbox(writer, "done")
    running: set[asyncio.Task] = set()

    async def one(seq: int, item_id: int, item_data: dict[str, Any] | None) -> None:
        done.add((seq, await batch_type.outcome_of(ctx, item_id, item_data)))

    async with PlatformClient.from_settings(settings, tokens) as platform:
        ctx = ItemContext(tenant_id, batch_id, task_type, settings, engine, platform)
        writer.write(frame(("ready", os.getpid())))
        while (message := await read_frame(reader)) is not None:
            kind, body = message
            if kind == "items":
                for seq, item_id, item_data in body:
                    job = asyncio.create_task(one(seq, item_id, item_data))
                    running.add(job)
                    job.add_done_callback(running.discard)
            elif kind == "preload":
                try:
                    await asyncio.to_thread(tokens.preload, body)
                except Exception as exc:  # the database is down: each item reads its own (the run waits out the outage)
                    log.warning("could not preload %s accounts' credentials: %s", len(body), type(exc).__name__)
            elif kind == "forget":
                tokens.forget(body)
            elif kind == "close":
                break
        if running:
            await asyncio.gather(*running)
        done.flush()
        await writer.drain()
    writer.close()
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    task_type, tenant_id, batch_id = (argv or sys.argv[1:])[:3]
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
    run(_serve(task_type, int(tenant_id), int(batch_id), out_fd))


if __name__ == "__main__":
    main()
