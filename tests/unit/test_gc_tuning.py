"""quiet_gc: objects alive at the start are frozen and the youngest generation grows while a
batch runs; the last batch of the process to end puts everything back."""

from __future__ import annotations

import gc

import pytest

from batchlib.gc_tuning import GEN0_THRESHOLD, quiet_gc

pytestmark = pytest.mark.unit


def test_nested_batches_freeze_once_and_the_last_one_restores() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with quiet_gc():
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (max(before[0], GEN0_THRESHOLD), before[1], before[2])
        with quiet_gc():  # a second batch of the same process
            assert gc.get_threshold()[0] == max(before[0], GEN0_THRESHOLD)
        assert gc.get_freeze_count() > frozen  # the first one still runs
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_an_error_in_the_batch_still_restores() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
