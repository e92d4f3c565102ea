"""The run's side of the item-process protocol, against fake helpers (no process, no service):
frames, chunks to the least busy helper, the limit's shares, progress and stop messages, a
helper that exits. The real helpers: tests/flows/test_item_processes.py."""

from __future__ import annotations

import asyncio

import pytest

from batchlib.item_processes import ItemProcesses, ItemProcessExited, _Helper, frame, read_frame

pytestmark = pytest.mark.unit


class FakeStdin:
    def __init__(self) -> None:
        self.frames = asyncio.StreamReader()

    def write(self, data: bytes) -> None:
        self.frames.feed_data(data)

    def is_closing(self) -> bool:
        return False


class FakeProc:
    """A helper process: what the run writes is readable from ``sent``; ``answer`` feeds its stdout."""

    pid = 4242

    def __init__(self) -> None:
        self.stdin = FakeStdin()
        self.stdout = asyncio.StreamReader()
        self.returncode: int | None = None

    async def sent(self):
        return await read_frame(self.stdin.frames)

    def answer(self, *chunks) -> None:
        """Chunks done: (first id, counts) pairs, in one frame."""
        self.stdout.feed_data(frame(("done", list(chunks))))

    def tell(self, kind: str, body) -> None:
        self.stdout.feed_data(frame((kind, body)))

    def exit(self, code: int) -> None:
        self.returncode = code
        self.stdout.feed_eof()

    async def wait(self) -> int:
        return self.returncode


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 5))  # a lost answer fails the test instead of hanging it


def pool_of(*procs: FakeProc) -> ItemProcesses:
    helpers = [_Helper(p) for p in procs]
    pool = ItemProcesses(helpers)
    for helper in helpers:
        helper.reader = asyncio.create_task(pool._read(helper))
    return pool


DONE = {"success": 2, "failed": 0, "skipped": 0, "not_started": 0}


def items(*ids: int) -> list[tuple[int, None]]:
    return [(i, None) for i in ids]


def test_a_frame_round_trips_and_the_end_of_the_stream_is_none() -> None:
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(frame(("chunk", (7, [(7, {"nickname": "Ann"})]))))
        reader.feed_eof()
        return await read_frame(reader), await read_frame(reader)

    assert run(scenario()) == (("chunk", (7, [(7, {"nickname": "Ann"})])), None)


def test_chunks_go_to_the_least_busy_helper_and_answers_find_their_callers() -> None:
    async def scenario():
        a, b = FakeProc(), FakeProc()
        pool = pool_of(a, b)
        big = asyncio.create_task(pool.run_chunk(1, items(1, 2, 3)))
        await asyncio.sleep(0)
        small = asyncio.create_task(pool.run_chunk(4, items(4, 5)))
        await asyncio.sleep(0)
        third = asyncio.create_task(pool.run_chunk(6, items(6)))  # b holds fewer items (2 < 3)
        sent_a, sent_b = [await a.sent()], [await b.sent(), await b.sent()]
        b.answer((6, {**DONE, "success": 1}), (4, DONE))
        a.answer((1, {**DONE, "failed": 1}))
        return sent_a, sent_b, await asyncio.gather(big, small, third)

    sent_a, sent_b, counts = run(scenario())
    assert sent_a == [("chunk", (1, items(1, 2, 3)))]
    assert sent_b == [("chunk", (4, items(4, 5))), ("chunk", (6, items(6)))]
    assert counts == [{**DONE, "failed": 1}, DONE, {**DONE, "success": 1}]


def test_the_limit_is_split_between_live_helpers_and_sent_only_when_a_share_changes() -> None:
    async def scenario():
        a, b = FakeProc(), FakeProc()
        pool = pool_of(a, b)
        pool.resize(5)
        pool.resize(5)  # unchanged: nothing sent
        pool.resize(0)  # paused
        sent = [[await p.sent() for _ in range(2)] for p in (a, b)]
        b.exit(-9)
        await asyncio.sleep(0.01)
        pool.resize(5)  # a alone now has all of it
        sent[0].append(await a.sent())
        return sent

    sent_a, sent_b = run(scenario())
    assert sent_a == [("slots", 3), ("slots", 0), ("slots", 5)]
    assert sent_b == [("slots", 2), ("slots", 0)]


def test_progress_slots_in_use_and_a_helper_s_stop_reach_the_run() -> None:
    async def scenario():
        a, b = FakeProc(), FakeProc()
        pool = pool_of(a, b)
        stops: list[str] = []
        pool.on_stop = stops.append
        a.tell("moved", 120)
        b.tell("moved", 80)
        a.tell("in_use", 3)
        b.tell("in_use", 4)
        b.tell("stop", "cancelled")
        await asyncio.sleep(0.01)
        in_use = pool.in_use
        pool.stop()
        sent = await a.sent(), await b.sent()
        b.exit(-9)
        await asyncio.sleep(0.01)
        return pool.moved, in_use, pool.in_use, stops, sent

    assert run(scenario()) == (200, 7, 3, ["cancelled"], (("stop", None), ("stop", None)))


def test_a_helper_that_exits_fails_its_chunks_and_the_last_one_ends_the_pool() -> None:
    async def scenario():
        a, b = FakeProc(), FakeProc()
        pool = pool_of(a, b)
        lost = asyncio.create_task(pool.run_chunk(1, items(1, 2)))
        await asyncio.sleep(0)
        kept = asyncio.create_task(pool.run_chunk(3, items(3, 4)))
        await a.sent(), await b.sent()
        a.exit(-9)
        b.answer((3, DONE))
        with pytest.raises(ItemProcessExited):
            await lost
        counts, alive_after_one = await kept, pool.alive
        b.exit(0)
        await asyncio.gather(*(h.reader for h in pool._helpers))
        with pytest.raises(ItemProcessExited):
            await pool.run_chunk(5, items(5))
        return counts, alive_after_one

    assert run(scenario()) == (DONE, 1)
