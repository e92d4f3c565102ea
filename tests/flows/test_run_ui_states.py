"""Task-run states of items and chunks, without a server."""

from __future__ import annotations

import logging

import pytest

from batchcore.outcomes import ItemOutcome
from tasks.run_ui import _ReturnedFailure, chunk_state, item_state

pytestmark = pytest.mark.unit


def test_a_failed_item_is_a_failed_state_with_its_reason() -> None:
    state = item_state(ItemOutcome.failed(700004, "platform error (HTTP 500)"))
    assert state.is_failed() and state.message == "item 700004 failed: platform error (HTTP 500)"
    ok = ItemOutcome.success(700005, status="alive")
    assert item_state(ok) is ok and item_state(None) is None


def test_chunk_messages_count_the_failed_items() -> None:
    failed = chunk_state({"success": 247, "failed": 3, "skipped": 0, "not_started": 0})
    assert failed.is_failed() and failed.message == "250 items: 247 succeeded, 3 failed"
    stopped = chunk_state({"success": 5, "failed": 0, "skipped": 1, "not_started": 4})
    assert stopped.is_completed()
    assert stopped.message == "10 items: 5 succeeded, 0 failed, 1 skipped, 4 not started (batch stopped)"
    lost = chunk_state({"unknown": 250})  # the item process handling it exited
    assert lost.is_failed() and lost.message.startswith("250 items: 0 succeeded, 0 failed, 250 not known here")


def test_only_the_engine_record_of_a_returned_failure_is_dropped() -> None:
    def record(msg: str, exc_info=None) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, msg, None, exc_info)

    keep = _ReturnedFailure().filter
    assert not keep(record("Task run failed with state: Failed(message='item 1 failed: x')", (None, None, None)))
    try:
        raise ValueError("boom")
    except ValueError as exc:
        raised = (ValueError, exc, exc.__traceback__)
    assert keep(record("Task run failed with state: Failed(message='x')", raised))
    assert keep(record("Finished in state Failed('item 1 failed: x')"))
