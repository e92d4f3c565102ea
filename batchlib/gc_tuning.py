"""Python's cyclic garbage collector, kept out of a running batch's way.

One event loop makes every platform call of a batch, so a pause of that loop delays every call
in flight. With Prefect loaded a process holds ~10^6 objects, and a full (generation 2)
collection walks all of them: 150-270 ms with the loop stopped, every 3-5 s of a 10,000-item
batch, plus ~0.5 s of young-generation collections (docs/benchmarks.md). While at least one
batch runs in the process, ``quiet_gc`` moves the objects that exist when it starts (modules,
Prefect's engine, the run's set-up) out of the collector's sight (``gc.freeze``) and lets the
youngest generation grow to ``GEN0_THRESHOLD`` objects before a collection. When the last batch
of the process ends, everything goes back (``gc.unfreeze``, the previous thresholds): garbage
that existed at the start is collected later as usual, nothing is kept for good.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_gc", "GEN0_THRESHOLD"]

GEN0_THRESHOLD = 20_000  # Python's default is 700 allocations

_lock = threading.Lock()
_active = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Freeze the objects alive now and collect less often, until the last such block ends."""
    global _active, _saved
    with _lock:
        if _active == 0:
            _saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(max(_saved[0], GEN0_THRESHOLD), _saved[1], _saved[2])
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0 and _saved is not None:
                gc.unfreeze()
                gc.set_threshold(*_saved)
                _saved = None
