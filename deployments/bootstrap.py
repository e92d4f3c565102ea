"""Prepare a Prefect server and the mirror database for the batch operations (idempotent).

    python -m deployments.bootstrap [--deploy] [--skip-migrations]

1. ``python -m db upgrade`` against ``BATCH_DATABASE_URL`` (additive migrations; existing
   admin-panel tables are kept);
2. the process work pool of prefect.yaml (``batch-pool``), created if missing;
3. the automation "crash zombie flow runs" (created, or updated when it differs): a flow run
   that stops sending heartbeats for ``ZOMBIE_AFTER_S`` is marked CRASHED. Workers send them
   every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30, the smallest value Prefect accepts,
   set by prefect.yaml's job variables; its default, 180, would leave a dead run RUNNING 9 min);
   and, once the maintenance deployment exists, "replace a lost maintenance run": a
   maintenance run silent that long starts a stand-in maintenance run;
4. with ``--deploy``: ``prefect deploy --all`` from the repository root, without
   ``BATCH_REPO_DIR`` in its environment, so the pull step keeps ``{{ $BATCH_REPO_DIR }}``
   and each worker resolves it to its own checkout when a run starts; then the maintenance
   schedule's anchor is set: to the scheduled start of the maintenance run still running
   (a redeploy keeps the overlap, no gap), or, when none runs, to ``FIRST_RUN_AFTER_S``
   from now (a first install dispatches at once, not at the next 900 s tick).

Run it with ``PREFECT_API_URL`` pointing at the server and ``PREFECT_API_AUTH_STRING`` set
to the server's credential. Safe to run again at any time. The API is checked first: a missing
or refused credential, or an unreachable server, is a one-line error (exit 2) before anything
is written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from typing import Any

from batchcore.errors import BatchError
from db.migrate import check_accounts_table
from deployments.spec import REPO_ROOT, work_pool_name

__all__ = [
    "ApiUnusable", "anchor_maintenance_schedule", "check_api", "deploy_all", "ensure_automation",
    "ensure_stand_in_automation", "ensure_work_pool", "ensure_zombie_automation", "main", "migrate",
    "stand_in_automation", "zombie_automation",
]

log = logging.getLogger("deployments.bootstrap")

ZOMBIE_AUTOMATION = "crash zombie flow runs"
STAND_IN_AUTOMATION = "replace a lost maintenance run"
HEARTBEAT_FREQUENCY_S = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of every run (prefect.yaml's job variables)
# Three missed heartbeats, Prefect's recipe. Two gave false alarms on a loaded host: a live run
# marked Crashed keeps working (the reaper goes by the mirror's heartbeat) but ends Crashed in
# the UI. The resume bound does not depend on it: the reaper's own 60 s heartbeat window and the
# stand-in automation below act first.
ZOMBIE_AFTER_S = 3 * HEARTBEAT_FREQUENCY_S
# The stand-in waits 1.5 heartbeats: a false alarm only costs a stand-in that ends ~75 s later.
STAND_IN_AFTER_S = 45
MAINTENANCE = "maintenance/maintenance"
FIRST_RUN_AFTER_S = 20


class ApiUnusable(Exception):
    """The Prefect API cannot be used from here; the message says why, in one line, without the credential."""


async def check_api() -> None:
    """One authenticated request (``/health`` is open even with authentication on)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value() or "(ephemeral)"
    try:
        async with get_client() as client:
            (await client.hello()).raise_for_status()
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code != 401:
            raise ApiUnusable(f"the Prefect API at {url} answered {exc.response.status_code}") from None
        if PREFECT_API_AUTH_STRING.value() is None:
            raise ApiUnusable(
                f"the Prefect API at {url} requires authentication: set PREFECT_API_AUTH_STRING "
                "to the server's PREFECT_SERVER_API_AUTH_STRING"
            ) from None
        raise ApiUnusable(
            f"the Prefect API at {url} refused PREFECT_API_AUTH_STRING (401): it must equal the "
            "server's PREFECT_SERVER_API_AUTH_STRING"
        ) from None
    except (httpx.TransportError, OSError) as exc:
        raise ApiUnusable(f"cannot reach the Prefect API at {url}: {type(exc).__name__}") from None


async def ensure_work_pool(name: str) -> bool:
    """Create the process work pool ``name`` if it does not exist; True when created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != "process":
                raise SystemExit(f"work pool {name!r} exists with type {pool.type!r}, expected 'process'")
            return False
        try:
            await client.create_work_pool(WorkPoolCreate(
                name=name,
                type="process",
                description="Batch operations (account checks, nickname/avatar changes, ...)",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            ))
        except ObjectAlreadyExists:  # created by a concurrent bootstrap
            return False
        return True


def _silence_trigger(after_s: int, *related: dict[str, str]) -> Any:
    """A flow run (optionally with these related resources) sent a heartbeat, then neither
    another one nor an ending within ``after_s``: Prefect's "detect zombie flows" trigger."""
    from datetime import timedelta

    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        match_related=[ResourceSpecification(r) for r in related] if related else ResourceSpecification({}),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=after_s),
    )


def zombie_automation(after_s: int = ZOMBIE_AFTER_S) -> Any:
    """Every flow run that stopped heartbeating -> CRASHED (its batch is then reaped as gone)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"A flow run sent no heartbeat for {after_s}s (its worker or host is gone): mark it Crashed.",
        trigger=_silence_trigger(after_s),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {after_s}s: marked Crashed by the zombie automation",
        )],
    )


def stand_in_automation(maintenance_id: Any, after_s: int = STAND_IN_AFTER_S) -> Any:
    """A maintenance run that stopped heartbeating -> a stand-in maintenance run, directly.

    The deployment trigger of prefect.yaml (a maintenance run became Crashed) does not fire
    when the Crashed state comes from the zombie automation of a real, killed run (measured
    on 3.8.8: no stand-in within 3 minutes, while a Crashed state set through the API fires it
    within 5 s), so the stand-in hangs off the silence itself, one automation hop."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore

    return AutomationCore(
        name=STAND_IN_AUTOMATION,
        description=f"A maintenance run sent no heartbeat for {after_s}s: start a stand-in maintenance run.",
        trigger=_silence_trigger(after_s, {"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.maintenance"}),
        actions=[RunDeployment(source="selected", deployment_id=maintenance_id, parameters={"stand_in": True})],
    )


async def ensure_automation(wanted: Any) -> str:
    """Create an automation by name, or update it when it differs; returns what was done."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        existing = await client.read_automations_by_name(wanted.name)
        if not existing:
            await client.create_automation(wanted)
            return "created"
        first, *duplicates = existing
        for extra in duplicates:
            await client.delete_automation(extra.id)
        same = all(
            getattr(first, f) == getattr(wanted, f) for f in ("description", "enabled", "trigger", "actions")
        )
        if same and not duplicates:
            return "unchanged"
        await client.update_automation(first.id, wanted)
        return "updated"


async def ensure_zombie_automation() -> str:
    return await ensure_automation(zombie_automation())


async def ensure_stand_in_automation() -> str:
    """The stand-in automation, once the maintenance deployment exists."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(MAINTENANCE)
        except ObjectNotFound:
            return "skipped (deploy first: --deploy)"
    return await ensure_automation(stand_in_automation(deployment.id))


async def anchor_maintenance_schedule() -> str:
    """Anchor the maintenance interval schedule (see the module docstring); returns the anchor."""
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(MAINTENANCE)
        live = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING]))),
            deployment_filter=_deployment_filter(deployment.id),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1,
        )
        if live and live[0].expected_start_time is not None:
            anchor = live[0].expected_start_time
        else:
            anchor = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=FIRST_RUN_AFTER_S)
        for item in deployment.schedules:
            if isinstance(item.schedule, IntervalSchedule):
                await client.update_deployment_schedule(deployment.id, item.id, schedule=IntervalSchedule(
                    interval=item.schedule.interval, anchor_date=anchor, timezone=item.schedule.timezone,
                ))
        # A schedule update leaves the deployment's `updated` as it was, so only the scheduler's
        # 60 s loop would see it (after the first run's time: it would be skipped). Touching the
        # deployment lets the "recent deployments" loop (every 5 s) schedule it now.
        await client.update_deployment(deployment.id, DeploymentUpdate(description=deployment.description))
    return anchor.isoformat()


def _deployment_filter(deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def migrate() -> str | None:
    from db import current, upgrade

    upgrade()
    return current()


def deploy_all() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BATCH_REPO_DIR"}  # resolved per worker, at run time
    subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=REPO_ROOT, env=env, check=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", action="store_true", help="also run `prefect deploy --all`")
    parser.add_argument("--skip-migrations", action="store_true", help="do not touch the mirror database")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if not args.skip_migrations:  # reads only: the accounts table is what the settings describe
            check_accounts_table()
        asyncio.run(check_api())
        if not args.skip_migrations:
            log.info("mirror database at revision %s", migrate())
    except (ApiUnusable, BatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pool = work_pool_name()
    created = asyncio.run(ensure_work_pool(pool))
    log.info("work pool %r %s", pool, "created" if created else "already exists")
    log.info("automation %r %s", ZOMBIE_AUTOMATION, asyncio.run(ensure_zombie_automation()))
    if args.deploy:
        deploy_all()
        log.info("maintenance schedule anchored at %s", asyncio.run(anchor_maintenance_schedule()))
    log.info("automation %r %s", STAND_IN_AUTOMATION, asyncio.run(ensure_stand_in_automation()))
    log.info("reminder: every worker needs BATCH_REPO_DIR=<its checkout> (here: %s) in its environment", REPO_ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
