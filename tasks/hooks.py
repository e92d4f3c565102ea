"""Flow-run state hooks that mirror a run's ending into la_batch_task.

When a run is cancelled from the UI or crashes, the runner's own cleanup may not get to
close its batch; these hooks find the batches the flow run owns (la_batch_run.flow_run_id)
and close them, fenced, with the batch type's closing summary (``finish_with_summary``).
A SIGKILLed worker runs no hook: the reaper handles that.
"""

from __future__ import annotations

import logging

from batchcore.errors import BatchError
from batchlib.notify import batch_ended
from db import get_engine, run_transaction, running_batches
from db import statuses as st
from tasks.batch_steps import finish_with_summary

__all__ = ["mark_cancelled", "mark_crashed", "mark_failed", "close_owned_batches"]

log = logging.getLogger(__name__)


def close_owned_batches(flow_run_id: str, status: str, reason: str | None) -> list[int]:
    engine = get_engine()
    closed = []
    try:
        owned = run_transaction(engine, lambda s: running_batches(s, flow_run_id))
    except Exception as exc:  # the mirror is unreachable: the reaper closes them later
        log.warning("could not look up the batches of flow run %s (%s); the reaper will close them",
                    flow_run_id, type(exc).__name__)
        return closed
    for batch_id, fence, _ in owned:
        try:
            run_transaction(engine, lambda s: finish_with_summary(s, batch_id, fence, status, reason))
            closed.append(batch_id)
            batch_ended(batch_id)  # email / webhook, in the background, once per ending
        except BatchError as exc:  # fenced out or already closed: not ours any more
            log.info("batch %s not closed by hook: %s", batch_id, exc)
        except Exception as exc:  # the mirror went away meanwhile: the reaper closes it later
            log.warning("batch %s not closed by hook (%s); the reaper will", batch_id, type(exc).__name__)
    return closed


def mark_cancelled(flow, flow_run, state) -> None:
    close_owned_batches(str(flow_run.id), st.CANCELLED, None)


def mark_crashed(flow, flow_run, state) -> None:
    close_owned_batches(str(flow_run.id), st.FAILED, f"flow run crashed: {state.message or state.type}")


def mark_failed(flow, flow_run, state) -> None:
    """A run that failed without closing its batch (an unexpected error) leaves it failed, not running."""
    close_owned_batches(str(flow_run.id), st.FAILED, f"flow run failed: {state.message or state.type}")
