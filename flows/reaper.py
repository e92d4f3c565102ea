"""reaper: fail ``running`` batches whose run is gone, and resume them automatically.

    python -m flows.reaper        # one pass (the maintenance flow runs one every 15 s)

Two checks, both fenced (a batch re-claimed meanwhile is left alone):

1. the batch's flow run (la_batch_run.flow_run_id) is over on the Prefect server (CRASHED,
   CANCELLED, FAILED, COMPLETED) or does not exist, and the batch has not heartbeated for
   ``gone_grace_s`` (default: 3 heartbeats, at least 15 s);
2. the batch has not heartbeated for ``BATCH_REAPER_STALE_AFTER_S`` (default 60 s): a
   SIGKILLed worker leaves its flow run RUNNING on the server (until the zombie automation
   crashes it), this catches it first.

A live run heartbeats every ``BATCH_HEARTBEAT_INTERVAL_S`` (5 s), so neither check touches
it. Both also cover a batch the admin panel cancelled or soft-deleted while it ran and whose
run never closed it: that one ends ``cancelled`` (it holds its tenant and type until then).
A reaped running batch is ``failed`` with the reason; then, up to ``BATCH_AUTO_RESUME_MAX``
times per batch (default 3, 0: never), a new deployment run of its type resumes it on any
worker (only its pending items are processed) and its ``error_message`` reads
``auto-resume <n>/<max> after: <reason>``. Past the maximum it stays failed with the hint
to resume it by hand: ``prefect deployment run '<type deployment>' -p tenant_id=T -p batch_id=ID``.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger

from batchcore.settings import get_settings
from db import get_batch, get_engine, run_transaction
from flows.dispatcher import deployment_for
from tasks.maintenance import (
    awaiting_resume,
    flow_run_ending,
    reap_gone_run,
    reap_stale_batches,
    reserve_resumes,
    resume_run_lost,
    resumes_reserved,
    running_batches_seen,
    start_resume_run,
)

__all__ = ["reaper", "reap_once", "auto_resume_once", "resume_hint"]

RESUME_RUN_GRACE_S = 60  # a resume run that has not claimed its batch after this is checked for an ending


def resume_hint(batch_id: int, task_type: str | None = None, tenant_id: int | None = None) -> str:
    deployment = deployment_for(task_type or "") if task_type else None
    if deployment and tenant_id is not None:
        return f"resume: prefect deployment run '{deployment}' -p tenant_id={tenant_id} -p batch_id={batch_id}"
    return f"resume with a run of its deployment with tenant_id and batch_id={batch_id}"


def reap_once(
    gone_grace_s: float | None = None,
    auto_resume_max: int | None = None,
    deployments: dict[str, str] | None = None,
) -> dict:
    """One reaper pass, then the automatic resumes it made due (call it inside a flow).

    ``auto_resume_max`` defaults to ``BATCH_AUTO_RESUME_MAX``; ``deployments`` (task_type ->
    deployment) to the dispatcher's map."""
    settings = get_settings()
    resume_max = settings.auto_resume_max if auto_resume_max is None else auto_resume_max
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
        row = _batch_row(batch.batch_id)
        hint = resume_hint(batch.batch_id, row and row.task_type, row and int(row.tenant_id))
        reason = f"flow run {batch.flow_run_id} {ending} and left the batch running; {hint}"
        if reap_gone_run(batch.batch_id, batch.fence, reason):
            gone.append(batch.batch_id)
    stale: list[int] = []
    if stale_candidates:
        stale = reap_stale_batches(
            stale_after,
            f"no heartbeat for {stale_after}s (its worker or host is gone); "
            "resume: a run of this type's deployment with tenant_id and batch_id set to this batch's",
        )
    if gone or stale:
        get_run_logger().warning("reaped: %s gone, %s stale", gone, stale)
    return {"gone": gone, "stale": stale, "resumed": auto_resume_once(resume_max, deployments)}


def auto_resume_once(max_attempts: int, deployments: dict[str, str] | None = None) -> list[int]:
    """Start the resume run of every reaped batch with attempts left; returns their batch ids.

    Each attempt is reserved once in la_batch_run (a compare-and-set) and its flow run is
    created under the key ``auto-resume-<batch>-<create_time>-<attempt>``, so overlapping
    maintenance runs start one run per attempt. A resume run that ended without claiming
    the batch (its worker died too) hands it back for the next attempt.
    """
    now = int(time.time())
    for resume in resumes_reserved():  # resume runs that ended without claiming: hand the batch back
        if resume.flow_run_id is not None and now - resume.since >= RESUME_RUN_GRACE_S:
            ending = flow_run_ending(resume.flow_run_id)
            if ending is not None:
                resume_run_lost(resume, ending)
    if max_attempts > 0 and awaiting_resume():
        reserve_resumes(max_attempts)
    started = []
    for resume in resumes_reserved():
        deployment = deployment_for(resume.task_type) if deployments is None else deployments.get(resume.task_type)
        if resume.flow_run_id is not None or deployment is None:
            continue  # started already, or a type this installation does not run any more (stays failed)
        try:
            if start_resume_run(resume, deployment, max_attempts):
                started.append(resume.batch_id)
        except Exception as exc:  # e.g. the API is down: retried on the next pass
            get_run_logger().error("batch %s: cannot start its resume run: %s", resume.batch_id, exc)
    return started


def _batch_row(batch_id: int):
    return run_transaction(get_engine(), lambda s: get_batch(s, batch_id))


@flow(name="reaper")
def reaper(gone_grace_s: float | None = None, auto_resume_max: int | None = None) -> dict:
    return reap_once(gone_grace_s, auto_resume_max)


def main(argv: list[str] | None = None) -> int:
    print(reaper())
    return 0


if __name__ == "__main__":
    sys.exit(main())
