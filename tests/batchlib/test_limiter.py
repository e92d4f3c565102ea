"""The resizable limiter on its own: no services, milliseconds."""

from __future__ import annotations

import asyncio

import pytest

from batchlib.limiter import ResizableLimiter

pytestmark = pytest.mark.unit


def run(coro):
    return asyncio.run(coro)


class Holders:
    """Tasks that take a slot and hold it until told to finish; counts the peak held."""

    def __init__(self, limiter: ResizableLimiter) -> None:
        self.limiter = limiter
        self.running = 0
        self.peak = 0
        self.started = 0
        self.gate = asyncio.Event()

    async def one(self) -> None:
        async with self.limiter:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
            await self.gate.wait()
            self.running -= 1


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_never_more_holders_than_the_size() -> None:
    async def main():
        limiter = ResizableLimiter(3)
        h = Holders(limiter)
        tasks = [asyncio.create_task(h.one()) for _ in range(10)]
        await settle()
        assert (h.running, limiter.in_use, limiter.waiting) == (3, 3, 7)
        h.gate.set()
        await asyncio.gather(*tasks)
        assert h.peak == 3 and limiter.in_use == 0 and h.started == 10

    run(main())


def test_grow_starts_waiters_at_once() -> None:
    async def main():
        limiter = ResizableLimiter(2)
        h = Holders(limiter)
        tasks = [asyncio.create_task(h.one()) for _ in range(10)]
        await settle()
        limiter.resize(6)
        await settle()
        assert h.running == 6 and limiter.in_use == 6
        h.gate.set()
        await asyncio.gather(*tasks)

    run(main())


def test_shrink_drains_holders_above_the_new_size_without_new_starts() -> None:
    async def main():
        limiter = ResizableLimiter(5)
        started = []
        finish = {i: asyncio.Event() for i in range(10)}

        async def one(i: int) -> None:
            async with limiter:
                started.append(i)
                await finish[i].wait()

        tasks = [asyncio.create_task(one(i)) for i in range(10)]
        await settle()
        assert started == [0, 1, 2, 3, 4]
        limiter.resize(2)
        for i in (0, 1, 2):  # three finish: still 2 held, above nothing, so nobody starts
            finish[i].set()
            await settle()
        assert started == [0, 1, 2, 3, 4] and limiter.in_use == 2
        finish[3].set()
        await settle()
        assert started == [0, 1, 2, 3, 4, 5] and limiter.in_use == 2  # below 2: one starts
        for e in finish.values():
            e.set()
        await asyncio.gather(*tasks)
        assert limiter.in_use == 0

    run(main())


def test_size_zero_pauses_and_a_resize_resumes() -> None:
    async def main():
        limiter = ResizableLimiter(0)
        h = Holders(limiter)
        h.gate.set()
        tasks = [asyncio.create_task(h.one()) for _ in range(4)]
        await asyncio.sleep(0.01)
        assert h.started == 0 and limiter.waiting == 4
        limiter.resize(1)
        await asyncio.gather(*tasks)
        assert h.started == 4 and h.peak == 1

    run(main())


def test_open_lets_every_waiter_through_even_when_paused() -> None:
    async def main():
        limiter = ResizableLimiter(0)
        h = Holders(limiter)
        h.gate.set()
        tasks = [asyncio.create_task(h.one()) for _ in range(4)]
        await settle()
        limiter.open()
        await asyncio.gather(*tasks)
        await limiter.acquire()  # and later ones
        limiter.release()
        assert h.started == 4 and limiter.in_use == 0 and limiter.is_open

    run(main())


def test_a_cancelled_waiter_neither_takes_nor_loses_a_slot() -> None:
    async def main():
        limiter = ResizableLimiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        behind = asyncio.create_task(limiter.acquire())
        await settle()
        waiter.cancel()
        await settle()
        limiter.release()
        await asyncio.wait_for(behind, 1)
        assert limiter.in_use == 1 and limiter.waiting == 0

    run(main())


def test_a_waiter_cancelled_after_being_granted_hands_its_slot_on() -> None:
    async def main():
        limiter = ResizableLimiter(1)
        await limiter.acquire()
        granted = asyncio.create_task(limiter.acquire())
        behind = asyncio.create_task(limiter.acquire())
        await settle()
        limiter.release()  # grants ``granted`` its slot ...
        granted.cancel()  # ... which is cancelled before it runs
        await asyncio.wait_for(behind, 1)
        assert limiter.in_use == 1

    run(main())


def test_first_come_first_served() -> None:
    async def main():
        limiter = ResizableLimiter(1)
        await limiter.acquire()
        order = []

        async def one(i: int) -> None:
            async with limiter:
                order.append(i)

        tasks = [asyncio.create_task(one(i)) for i in range(5)]
        await settle()
        limiter.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]

    run(main())


def test_a_newcomer_does_not_wait_behind_waiters_already_granted() -> None:
    async def main():
        limiter = ResizableLimiter(1)
        await limiter.acquire()
        first = asyncio.create_task(limiter.acquire())
        await settle()
        limiter.resize(3)  # grants ``first``; it has not run yet
        await asyncio.wait_for(limiter.acquire(), 1)  # room for one more: no deadlock
        await first
        assert limiter.in_use == 3

    run(main())


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError):
        ResizableLimiter(-1)
    limiter = ResizableLimiter(1)
    with pytest.raises(ValueError):
        limiter.resize(-2)
    with pytest.raises(RuntimeError):
        limiter.release()
