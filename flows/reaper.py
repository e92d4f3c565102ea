"""reaper: fail ``running`` batches whose run is gone, so they can be resumed.

    python -m flows.reaper

Two checks, both fenced (a batch re-claimed meanwhile is left alone):

1. the batch's flow run (la_batch_run.flow_run_id) is over on the Prefect server (CRASHED,
   CANCELLED, FAILED, COMPLETED) or does not exist, and the batch has not heartbeated for
   ``gone_grace_s`` (default: 3 heartbeats, at least 15 s);
2. the batch has not heartbeated for ``BATCH_REAPER_STALE_AFTER_S`` (default 120 s): a
   SIGKILLed worker leaves its flow run RUNNING on the server, this catches it.

A live run heartbeats every ``BATCH_HEARTBEAT_INTERVAL_S`` (5 s), so neither check touches
it. Both also cover a batch the admin panel cancelled or soft-deleted while it ran and whose
run never closed it: that one ends ``cancelled`` (it holds its tenant and type until then).
A reaped running batch is ``failed`` with the reason; resume it with
``python -m flows.account_check --resume ID`` or a deployment run with ``batch_id=ID``:
only its pending items are processed.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger

from batchlib.settings import get_settings
from flows.dispatcher import deployment_for
from tasks.maintenance import flow_run_ending, reap_gone_run, reap_stale_batches, running_batches_seen

__all__ = ["reaper", "resume_hint"]


def resume_hint(batch_id: int, task_type: str | None = None) -> str:
    deployment = deployment_for(task_type or "") if task_type else None
    if deployment:
        return f"resume: prefect deployment run '{deployment}' -p batch_id={batch_id}"
    return f"resume with a run of its deployment with batch_id={batch_id}"


@flow(name="reaper")
def reaper(gone_grace_s: float | None = None) -> dict:
    settings = get_settings()
    grace = gone_grace_s if gone_grace_s is not None else max(3 * settings.heartbeat_interval_s, 15.0)
    stale_after = settings.reaper_stale_after_s
    now = int(time.time())
    gone, stale_candidates = [], 0
    for batch in running_batches_seen():
        silent = now - batch.seen
        if silent > stale_after:
            stale_candidates += 1
            continue  # failed below, by the heartbeat window alone
        if silent <= grace or batch.flow_run_id is None:
            continue  # heartbeating: healthy, whatever the API says
        ending = flow_run_ending(batch.flow_run_id)
        if ending is None:
            continue
        hint = resume_hint(batch.batch_id, _type_of(batch.batch_id))
        reason = f"flow run {batch.flow_run_id} {ending} and left the batch running; {hint}"
        if reap_gone_run(batch.batch_id, batch.fence, reason):
            gone.append(batch.batch_id)
    stale: list[int] = []
    if stale_candidates:
        stale = reap_stale_batches(
            stale_after,
            f"no heartbeat for {stale_after}s (its worker or host is gone); "
            "resume: a run of this type's deployment with batch_id set to this batch's id",
        )
    if gone or stale:
        get_run_logger().warning("reaped: %s gone, %s stale", gone, stale)
    return {"gone": gone, "stale": stale}


def _type_of(batch_id: int) -> str | None:
    from db import get_batch, get_engine, run_transaction

    engine = get_engine(get_settings().database_url.get_secret_value())
    row = run_transaction(engine, lambda s: get_batch(s, batch_id))
    return row.task_type if row is not None else None


def main(argv: list[str] | None = None) -> int:
    print(reaper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
