"""dispatcher: start the batches the admin panel inserts as ``pending`` la_batch_task rows.

    python -m flows.dispatcher            # one pass
    python -m flows.dispatcher --loop 60  # poll every 2 s for 60 s (the maintenance flow does this, and reaps)

Each pending row becomes one deployment run of its type, with parameters
``{batch_id, tenant_id}``; the run claims the row and owns it from then on. A row whose
``task_type`` is unknown, or whose ``task_data`` cannot be read (not UTF-8 JSON, too large,
nested too deep, not an object, keys its type does not take), is marked ``failed`` with a
readable ``error_message``. Each row is judged alone: whatever one row holds, the pass goes on
with the next.

Rows queue per (tenant, type): a row is started only when no batch of its tenant and type
is running (or still stopping after a cancel) and no older pending row of that key waits;
until then it stays ``pending`` (counted "queued"). The database's unique key on running
rows is the guarantee; this keeps the dispatcher from starting runs that could only be refused.

Exactly one run per row, even when two dispatchers overlap: the dispatch is noted in the
row's la_batch_run record (owner ``dispatcher:<attempt>``) and the flow run is created with
the idempotency key ``batch-<id>-<create_time>-<attempt>``, which the Prefect server
de-duplicates per flow. A dispatched row is not dispatched again while its run may still
claim it; only when that run ended (or vanished) without claiming it, and
``redispatch_after_s`` passed, a new attempt starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import replace

from prefect import flow, get_run_logger

from batchlib.batch_types import batch_types
from tasks.maintenance import (
    dispatch_notes_for,
    fail_row,
    flow_run_ending,
    key_holders,
    pending_rows,
    restart_batch_run,
    row_problem,
    start_batch_run,
)

__all__ = ["DEPLOYMENTS", "deployment_for", "dispatcher", "dispatch_once"]

# task_type -> the deployment ("flow name/deployment name") that runs it, from the declarations
# of the batch types (batchlib/batch_types.py).
DEPLOYMENTS: dict[str, str] = {batch_type.name: batch_type.deployment for batch_type in batch_types()}


def deployment_for(task_type: str) -> str | None:
    return DEPLOYMENTS.get(task_type)


def dispatch_once(
    limit: int = 100, redispatch_after_s: int = 120, deployments: dict[str, str] | None = None
) -> Counter:
    """One pass over the pending rows; counts what happened to them (call it inside a flow)."""
    deployments = DEPLOYMENTS if deployments is None else deployments
    outcome: Counter = Counter()
    rows = pending_rows(limit)
    notes = dispatch_notes_for([r.batch_id for r in rows])
    ahead = key_holders() if rows else {}  # (tenant, type) -> the batch the next row waits for
    now = int(time.time())
    for row in rows:
        try:
            problem = row_problem(row, deployments)
        except Exception as exc:  # a check that breaks on a row fails that row, not the pass
            problem = f"invalid task_data: cannot be read ({type(exc).__name__})"
        if problem is not None:
            outcome["failed" if fail_row(row.batch_id, problem) else "claimed"] += 1
            continue
        if ahead.setdefault((row.tenant_id, row.task_type), row.batch_id) != row.batch_id:
            outcome["queued"] += 1  # started once the batch ahead of it has ended
            continue
        deployment = deployments[row.task_type]
        note = notes.get(row.batch_id)
        row = replace(row, task_data=None)  # validated; the run reads it from the row itself
        try:
            if note is None or note.flow_run_id is None:
                started = start_batch_run(row, deployment)
                outcome["started" if started else "claimed"] += 1
                continue
            ending = None if now - note.since < redispatch_after_s else flow_run_ending(note.flow_run_id)
            if ending is None:
                outcome["waiting"] += 1  # its run may still claim it
                continue
            started = restart_batch_run(row, deployment, note, ending)
            outcome["restarted" if started else "claimed"] += 1
        except Exception as exc:  # e.g. the deployment is missing: the row stays pending
            get_run_logger().error("batch %s: cannot start %s: %s", row.batch_id, deployment, exc)
            outcome["error"] += 1
    return outcome


@flow(name="dispatcher")
def dispatcher(run_for_s: float = 0.0, poll_s: float = 2.0, limit: int = 100, redispatch_after_s: int = 120) -> dict:
    """Start pending admin-panel rows; with ``run_for_s`` > 0, keep polling every ``poll_s``."""
    deadline = time.monotonic() + run_for_s
    totals: Counter = Counter()
    while True:
        done = dispatch_once(limit, redispatch_after_s)
        if done:
            get_run_logger().info("dispatch pass: %s", dict(done))
        totals.update(done)
        if time.monotonic() + poll_s > deadline:
            break
        time.sleep(poll_s)
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.dispatcher", description=__doc__.splitlines()[0])
    parser.add_argument("--loop", type=float, default=0.0, metavar="SECONDS", help="keep polling this long")
    parser.add_argument("--poll", type=float, default=2.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    print(dispatcher(run_for_s=args.loop, poll_s=args.poll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
