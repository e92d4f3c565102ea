"""The run's side of the item-process protocol, against fake helpers (no process, no service):
frames, coalescing, answers, a helper that exits. The real helpers: tests/flows/test_item_processes.py."""

from __future__ import annotations

import asyncio

import pytest

from batchcore.outcomes import ItemOutcome
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

    def answer(self, *pairs) -> None:
        self.stdout.feed_data(frame(("done", list(pairs))))

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


async def one_item_each():
    """Two fake helpers and two items in flight: item 1 on the first, item 2 on the second."""
    a, b = FakeProc(), FakeProc()
    pool = pool_of(a, b)
    first = asyncio.create_task(pool.handle(1, None))
    await asyncio.sleep(0)
    second = asyncio.create_task(pool.handle(2, None))
    return a, b, pool, first, second


def test_a_frame_round_trips_and_the_end_of_the_stream_is_none() -> None:
    async def scenario():
        reader = asyncio.StreamReader()
        reader.feed_data(frame(("items", [(0, 7, {"nickname": "Ann"})])))
        reader.feed_eof()
        return await read_frame(reader), await read_frame(reader)

    assert run(scenario()) == (("items", [(0, 7, {"nickname": "Ann"})]), None)


def test_items_of_one_loop_turn_go_in_one_frame_and_answers_find_their_callers() -> None:
    async def scenario():
        proc = FakeProc()
        pool = pool_of(proc)
        calls = [asyncio.create_task(pool.handle(i, {"n": i})) for i in (11, 12, 13)]
        kind, items = await proc.sent()
        assert kind == "items" and [(i, d) for _, i, d in items] == [(11, {"n": 11}), (12, {"n": 12}), (13, {"n": 13})]
        seqs = {item_id: seq for seq, item_id, _ in items}
        proc.answer((seqs[13], ItemOutcome.failed(13, "HTTP 500")), (seqs[11], ItemOutcome.success(11)))
        proc.answer((seqs[12], ItemOutcome.success(12, status="banned")))
        return await asyncio.gather(*calls)

    assert run(scenario()) == [
        ItemOutcome.success(11), ItemOutcome.success(12, status="banned"), ItemOutcome.failed(13, "HTTP 500"),
    ]


def test_items_go_to_the_least_busy_helper_and_preloads_to_every_helper_in_order() -> None:
    async def scenario():
        a, b, pool, first, second = await one_item_each()
        await asyncio.sleep(0)
        pool.preload([1, 2, 3])
        sent_a, sent_b = [await a.sent(), await a.sent()], [await b.sent(), await b.sent()]
        for proc, sent in ((a, sent_a), (b, sent_b)):
            proc.answer((sent[0][1][0][0], ItemOutcome.success(sent[0][1][0][1])))
        await asyncio.gather(first, second)
        return sent_a, sent_b

    sent_a, sent_b = run(scenario())
    assert [m[0] for m in sent_a] == [m[0] for m in sent_b] == ["items", "preload"]  # the items went first
    assert {sent_a[0][1][0][1], sent_b[0][1][0][1]} == {1, 2}  # one item each
    assert sent_a[1] == sent_b[1] == ("preload", [1, 2, 3])


def test_a_helper_that_exits_leaves_its_items_unanswered_and_the_last_one_ends_the_pool() -> None:
    async def scenario():
        a, b, pool, lost, kept = await one_item_each()
        await a.sent()
        (_, [(seq, item_id, _)]) = await b.sent()
        a.exit(-9)
        b.answer((seq, ItemOutcome.success(item_id)))
        results = await lost, await kept
        alive_after_one = pool.alive
        b.exit(0)
        await b_reader_done(pool)
        with pytest.raises(ItemProcessExited):
            await pool.handle(3, None)
        return results, alive_after_one

    (lost, kept), alive = run(scenario())
    assert lost is None and kept == ItemOutcome.success(2) and alive == 1


async def b_reader_done(pool: ItemProcesses) -> None:
    await asyncio.gather(*(h.reader for h in pool._helpers))
