"""An async limiter whose size can change while tasks hold it.

The (tenant, type) limit of a running batch: every item takes a slot before its platform
call. Unlike ``asyncio.Semaphore`` it can be resized from outside while items are in
flight (an operator changed the limit):

- grow: waiters start at once, up to the new size;
- shrink: nothing is interrupted; holders above the new size finish, and no one starts
  until the holders are below the new size;
- size 0 pauses: nothing new starts until the size goes up again;
- ``open()`` lets every waiter and every later ``acquire`` through for good (a stopped batch:
  the callers see the stop and start nothing, instead of waiting on a paused limit).

Waiters are served first come, first served. The uncontended ``acquire`` does no awaiting,
like ``asyncio.Semaphore``: it is the only per-item step of the limit.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ResizableLimiter"]


class ResizableLimiter:
    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("a limiter's size cannot be negative")
        self._size = size
        self._in_use = 0
        self._open = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def size(self) -> int:
        return self._size

    @property
    def in_use(self) -> int:
        """Slots held now (may exceed ``size`` for a while after a shrink)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def is_open(self) -> bool:
        return self._open

    def _has_room(self) -> bool:
        return self._open or self._in_use < self._size

    async def acquire(self) -> None:
        if self._has_room() and (not self._waiters or all(w.done() for w in self._waiters)):
            self._in_use += 1  # no one is queued ahead (granted waiters already hold their slot)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._in_use -= 1  # granted just as we were cancelled: hand the slot on
                self._wake()
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def release(self) -> None:
        if self._in_use <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_use -= 1
        self._wake()

    def resize(self, size: int) -> None:
        """Set the number of slots; holders are never interrupted."""
        if size < 0:
            raise ValueError("a limiter's size cannot be negative")
        self._size = size
        self._wake()

    def open(self) -> None:
        """Let everyone through from now on (the batch stopped; nothing new will start)."""
        self._open = True
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not self._has_room():
                return
            if not waiter.done():
                self._in_use += 1  # the slot is taken on the waiter's behalf
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<ResizableLimiter {self._in_use}/{self._size} in use, {self.waiting} waiting>"
