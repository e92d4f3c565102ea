"""maintenance: the one scheduled flow that keeps the mirror moving.

    python -m flows.maintenance --for 60     # what a scheduled run does, for 60 s

One run loops for ``run_for_s`` (960 s) from its scheduled start:

- every ``poll_s`` (2 s): dispatch the ``pending`` rows the admin panel inserted
  (flows/dispatcher.py ``dispatch_once``);
- every ``reap_every_s`` (15 s): reap batches whose run died and resume them automatically
  (flows/reaper.py ``reap_once``);
- every ``templates_every_s`` (20 s): mirror the admin panel's templates (la_batch_template)
  into Prefect schedules when a row changed, all of them on the first pass
  (tasks/templates_sync.py ``sync_templates_once``).

The schedule starts one run every 900 s, so consecutive runs overlap by about a minute and a
dispatch never waits for a new run: about 96 runs a day instead of one dispatcher and one
reaper run a minute (2,880). Overlapping runs are harmless (a row is dispatched once: a
compare-and-set in la_batch_run plus the flow run's idempotency key; reaping and resuming
are fenced), so the deployment has no concurrency limit that a killed run could hold.

A run whose worker dies is replaced through Prefect: the bootstrap's automation "replace a
lost maintenance run" starts a *stand-in* run (``stand_in=True``) when a maintenance run stops
heartbeating (the zombie automation crashes the lost run at the same moment; prefect.yaml's
trigger also starts one when a maintenance run is reported Crashed). A stand-in reaps at
once; after ``stand_in_wait_s`` (75 s: by then the zombie automation has crashed the lost run)
it ends when a scheduled run or an older stand-in is running, otherwise it takes over until its
deadline. A run that starts after its deadline (runs that
piled up while no worker was up) does one pass and ends.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from datetime import datetime, timezone

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.dispatcher import dispatch_once
from flows.reaper import reap_once
from tasks.maintenance import live_maintenance_runs
from tasks.templates_sync import sync_templates_once

__all__ = ["maintenance"]


@flow(name="maintenance")
def maintenance(
    run_for_s: float = 960.0,
    poll_s: float = 2.0,
    reap_every_s: float = 15.0,
    stand_in: bool = False,
    limit: int = 100,
    redispatch_after_s: int = 120,
    templates_every_s: float = 20.0,
    stand_in_wait_s: float = 75.0,
) -> dict:
    """Dispatch every ``poll_s`` and reap every ``reap_every_s`` until ``run_for_s`` after the scheduled start."""
    log = get_run_logger()
    deadline = time.monotonic() + max(0.0, run_for_s - _late_by())
    totals: Counter = Counter()
    next_reap = next_templates = time.monotonic()
    templates_full = True  # the first sync of a run looks at every template
    # A stand-in first reaps, and only after stand_in_wait_s starts checking (every
    # reap_every_s) whether another run is on duty. The run it replaces stays RUNNING on the
    # server until the zombie automation crashes it, 90 s after its last heartbeat, while the
    # stand-in is started after 45 s: checking earlier, a stand-in saw the dead run "on duty",
    # ended, and nothing reaped until the next scheduled run (up to 15 minutes later).
    duty_check = time.monotonic() + max(stand_in_wait_s, reap_every_s)
    while True:
        if stand_in and time.monotonic() >= duty_check:
            duty_check = time.monotonic() + reap_every_s
            if _someone_else_on_duty():
                log.info("another maintenance run is on duty: this stand-in ends")
                break
        try:
            done = dispatch_once(limit, redispatch_after_s)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + reap_every_s
                reaped = reap_once()
                done.update({k: len(v) for k, v in reaped.items() if v})
            if time.monotonic() >= next_templates:
                next_templates = time.monotonic() + templates_every_s
                done.update(sync_templates_once(full=templates_full))
                templates_full = False
        except Exception as exc:  # e.g. the mirror or the API is down for a moment: try again next poll
            log.error("maintenance pass failed: %s: %s", type(exc).__name__, exc)
            done = Counter(error=1)
        if set(done) - {"waiting"}:  # rows whose run has not claimed them yet are no news
            log.info("maintenance pass: %s", dict(done))
        totals.update(done)
        if time.monotonic() + poll_s > deadline:
            break
        time.sleep(poll_s)
    return dict(totals)


def _late_by() -> float:
    """Seconds between this run's scheduled start and now (0 for a run started by hand)."""
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        return 0.0
    return max(0.0, (datetime.now(timezone.utc) - scheduled).total_seconds())


def _someone_else_on_duty() -> bool:
    """A scheduled maintenance run, or a stand-in created before this one, is running."""
    me = flow_run.id
    mine = None
    others = live_maintenance_runs()
    for run in others:
        if run.id == me:
            mine = run
    for run in others:
        if run.id == me:
            continue
        if not run.stand_in:
            return True
        if mine is not None and (run.created, run.id) < (mine.created, mine.id):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.maintenance", description=__doc__.splitlines()[0])
    parser.add_argument("--for", dest="run_for", type=float, default=0.0, metavar="SECONDS",
                        help="keep going this long (default: one pass)")
    args = parser.parse_args(argv)
    print(maintenance(run_for_s=args.run_for))
    return 0


if __name__ == "__main__":
    sys.exit(main())
