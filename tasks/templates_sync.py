"""The admin panel's templates (la_batch_template rows) mirrored into Prefect schedules.

The maintenance run calls ``sync_templates_once`` every ``templates_every_s`` (20 s). A pass
reads the table (one SELECT) and does nothing else unless a row changed since it was last
synced (its content digest differs, or the panel set ``sync_status='pending'``); the first
pass of each maintenance run is *full*: it also re-creates a schedule that was deleted on the
Prefect server and re-checks the rows in error (a tenant may have been loaded since).

Per changed row, alone (one row's problem never stops the next):

- deleted (``delete_time`` set): the row's schedule is deleted; ``sync_status='removed'``;
- refused (unknown type or tenant, bad task_data or items, bad cron or time zone, a name taken
  on that type): ``sync_status='error'`` and a one-line ``sync_error``; nothing changes in
  Prefect (a schedule of an earlier good version stays as it was);
- otherwise the schedule of the type's deployment whose slug is the template's name is
  created or updated with the row's cron, time zone and parameters, active when ``enabled``
  is 1, paused when 0: ``sync_status='synced'``.

The checks are the CLI's (``deployments.templates.validate``, plus the cron and time zone).
A row owns the schedule whose id it stores (``prefect_schedule_id``); a schedule with the same
name that the row does not own (a template saved with the CLI) is never touched. Overlapping
maintenance runs sync one at a time (a MariaDB named lock per database); the other skips.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from batchlib.settings import get_settings

__all__ = ["sync_templates_once", "template_problem", "template_parameters_of", "sync_template"]

TEMPLATE_NAME_MAX = 100  # la_batch_template.name


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # outside a flow or task run (a test, a shell)
        return logging.getLogger(__name__)


def _engine():
    from db import get_engine

    return get_engine(get_settings().database_url.get_secret_value())


def _tx(fn):
    from db import run_transaction

    return run_transaction(_engine(), fn)


@contextmanager
def _sync_lock() -> Iterator[bool]:
    """True when this process may sync now (MariaDB: a named lock of this database, not waited for)."""
    from sqlalchemy import text

    engine = _engine()
    if engine.dialect.name != "mysql":
        yield True
        return
    name = "CONCAT('batch_tpl_sync_', MD5(DATABASE()))"
    with engine.connect() as conn:
        got = conn.execute(text(f"SELECT GET_LOCK({name}, 0)")).scalar() == 1
        try:
            yield got
        finally:
            if got:
                conn.execute(text(f"SELECT RELEASE_LOCK({name})"))


def template_parameters_of(row: Any, task_data: dict[str, Any] | None) -> dict[str, Any]:
    """The flow parameters of a template row: its tenant, its type's inputs, its name as the task name."""
    inputs = {k: v for k, v in (task_data or {}).items() if v is not None}
    return {"tenant_id": row.tenant_id, **inputs, "task_name": row.name, "create_admin_id": row.create_admin_id}


def template_problem(row: Any, first_of_name: dict[tuple[str, str], int],
                     deployments: dict[str, str]) -> tuple[str | None, dict[str, Any], Any]:
    """(why the row is refused or None, its flow parameters, its CronSchedule); read-only."""
    from batchlib.batch_types import get_batch_type
    from batchlib.errors import BatchError
    from batchlib.task_data import decode_task_data
    from batchlib.validation import check_task_name
    from deployments.templates import cron_schedule, validate

    name = row.name if isinstance(row.name, str) else ""
    if not name.strip():
        return "the template has no name", {}, None
    try:
        check_task_name(name)
    except BatchError as exc:
        return f"invalid name: {exc}", {}, None
    if name != name.strip() or len(name) > TEMPLATE_NAME_MAX:
        return f"invalid name: at most {TEMPLATE_NAME_MAX} characters, no spaces around it", {}, None
    if row.enabled not in (0, 1):
        return f"enabled must be 0 or 1, got {row.enabled!r:.20}", {}, None
    if row.task_type not in deployments:
        known = ", ".join(sorted(deployments))
        return f"unknown task_type {str(row.task_type)[:60]!r}: this installation runs {known}", {}, None
    owner = first_of_name.get((row.task_type, name), row.id)
    if owner != row.id:
        return f"template #{owner} of {row.task_type} already has the name {name[:60]!r}", {}, None
    schedule, problem = cron_schedule(row.cron, row.timezone)
    if problem is not None:
        return f"invalid cron or timezone: {problem}", {}, None
    batch_type = get_batch_type(row.task_type)
    try:
        task_data = decode_task_data(row.task_data, batch_type)
    except BatchError as exc:
        return f"invalid task_data: {exc}", {}, None
    extra = sorted(set(task_data or {}) - set(batch_type.inputs))
    if extra:
        takes = ", ".join(sorted(batch_type.inputs)) or "no keys"
        return f"invalid task_data: a template of {row.task_type} takes {takes}, not {', '.join(extra)}", {}, None
    parameters = template_parameters_of(row, task_data)
    try:
        validate(row.task_type, parameters)
    except BatchError as exc:
        return f"refused: {exc}", parameters, schedule
    return None, parameters, schedule


class _Prefect:
    """The deployments and schedules one pass looks at, each read once."""

    def __init__(self, client: Any, deployments: dict[str, str]) -> None:
        self.client = client
        self.deployments = deployments
        self._ids: dict[str, Any] = {}
        self._schedules: dict[str, list[Any]] = {}

    def deployment_id(self, task_type: str) -> str | None:
        from prefect.exceptions import ObjectNotFound

        if task_type not in self._ids:
            try:
                self._ids[task_type] = str(self.client.read_deployment_by_name(self.deployments[task_type]).id)
            except ObjectNotFound:
                self._ids[task_type] = None
        return self._ids[task_type]

    def schedules(self, deployment_id: str) -> list[Any]:
        if deployment_id not in self._schedules:
            self._schedules[deployment_id] = list(self.client.read_deployment_schedules(deployment_id))
        return self._schedules[deployment_id]

    def has(self, deployment_id: str | None, schedule_id: str | None) -> bool:
        from prefect.exceptions import ObjectNotFound

        if not deployment_id or not schedule_id:
            return False
        try:
            return any(str(s.id) == schedule_id for s in self.schedules(deployment_id))
        except ObjectNotFound:  # the deployment is gone
            return False

    def saved(self, deployment_id: str, schedule: Any) -> None:
        """Keep the cached list as the server now has it (no re-read per row)."""
        listed = self.schedules(deployment_id)
        listed[:] = [s for s in listed if s.id != schedule.id] + [schedule]

    def delete(self, deployment_id: str | None, schedule_id: str | None) -> None:
        from prefect.exceptions import ObjectNotFound

        if not deployment_id or not schedule_id:
            return
        try:
            self.client.delete_deployment_schedule(deployment_id, schedule_id)
        except ObjectNotFound:
            pass  # deleted on the server already
        if deployment_id in self._schedules:
            self._schedules[deployment_id] = [s for s in self._schedules[deployment_id] if str(s.id) != schedule_id]


def _same(schedule: Any, wanted: Any, parameters: dict[str, Any]) -> bool:
    got = schedule.schedule
    return (getattr(got, "cron", None), getattr(got, "timezone", None), schedule.parameters) == (
        wanted.cron, wanted.timezone, parameters)


@task(name="sync-template", task_run_name="sync-template-{row.id}", cache_policy=NO_CACHE, persist_result=False)
def sync_template(row: Any, prefect: _Prefect, first_of_name: dict[tuple[str, str], int]) -> str:
    """Bring one row's schedule in line with it; returns what happened (created, updated, paused, ...)."""
    from db.templates import SYNC_ERROR, SYNC_REMOVED, SYNC_SYNCED, record_sync

    log = _log()
    if row.deleted:
        prefect.delete(row.prefect_deployment_id, row.prefect_schedule_id)
        _tx(lambda s: record_sync(s, row, SYNC_REMOVED))
        log.info("template #%s %r deleted: its schedule is removed", row.id, row.name)
        return "removed"

    problem, parameters, schedule = template_problem(row, first_of_name, prefect.deployments)
    deployment_id = None
    if problem is None:
        deployment_id = prefect.deployment_id(row.task_type)
        if deployment_id is None:
            problem = (f"deployment {prefect.deployments[row.task_type]} not found on the Prefect server"
                       " (python -m deployments.bootstrap --deploy)")
    mine = same_name = None
    if problem is None:
        if row.prefect_schedule_id and row.prefect_deployment_id != deployment_id:
            prefect.delete(row.prefect_deployment_id, row.prefect_schedule_id)  # its type changed
        schedules = prefect.schedules(deployment_id)
        mine = next((s for s in schedules if str(s.id) == row.prefect_schedule_id), None)
        same_name = next((s for s in schedules if s.slug == row.name), None)
        if same_name is not None and same_name is not mine:
            if mine is None and _same(same_name, schedule, parameters):
                mine = same_name  # created by a pass that stopped before recording it
            else:
                problem = (f"a template named {row.name[:60]!r} already exists on {row.task_type}"
                           " (saved with the CLI: python -m deployments.templates list)")
    if problem is not None:
        _tx(lambda s: record_sync(s, row, SYNC_ERROR, error=problem, keep_schedule=True))
        log.warning("template #%s %r refused: %s", row.id, row.name, problem)
        return "error"

    active = bool(row.enabled)
    if mine is None:
        [saved] = prefect.client.create_deployment_schedules(
            deployment_id, [(schedule, active)], parameters=parameters, slug=row.name
        )
        done = "created"
    else:
        prefect.client.update_deployment_schedule(
            deployment_id, mine.id, active=active, schedule=schedule, parameters=parameters, slug=row.name
        )
        saved = mine.model_copy(update={"active": active, "schedule": schedule, "parameters": parameters,
                                        "slug": row.name})
        done = "updated"
    prefect.saved(deployment_id, saved)
    schedule_id = str(saved.id)
    _tx(lambda s: record_sync(s, row, SYNC_SYNCED, deployment_id=deployment_id, schedule_id=schedule_id))
    done = done if active else f"{done}-paused"
    log.info("template #%s %r (%s, tenant %s): schedule %s, '%s' (%s)",
             row.id, row.name, row.task_type, row.tenant_id, done, row.cron, row.timezone)
    return done


def sync_templates_once(full: bool = False, deployments: dict[str, str] | None = None) -> Counter:
    """One pass over the template rows (call it inside a flow, or alone); counts what happened."""
    from prefect.client.orchestration import get_client

    from db.templates import SYNC_ERROR, SYNC_SYNCED, templates_to_sync
    from flows.dispatcher import DEPLOYMENTS

    deployments = DEPLOYMENTS if deployments is None else deployments
    outcome: Counter = Counter()
    with _sync_lock() as ours:
        if not ours:
            return outcome  # another maintenance run is syncing
        rows = _tx(templates_to_sync)
        todo = [r for r in rows if full or r.changed]
        if todo and not full:  # something changed: a row in error may be fine now (e.g. a name freed)
            todo += [r for r in rows if r.sync_status == SYNC_ERROR and not r.changed]
        if not todo:
            return outcome
        first_of_name: dict[tuple[str, str], int] = {}
        for r in rows:  # oldest first: the oldest live row keeps a name
            if not r.deleted:
                first_of_name.setdefault((r.task_type, r.name), r.id)
        with get_client(sync_client=True) as client:
            prefect = _Prefect(client, deployments)
            for row in sorted(todo, key=lambda r: r.id):
                if not row.changed and row.sync_status == SYNC_SYNCED and not row.deleted and prefect.has(
                        row.prefect_deployment_id, row.prefect_schedule_id):
                    continue  # a full pass over a row in place: untouched (a pause made in the UI is kept)
                try:
                    outcome[f"template_{sync_template(row, prefect, first_of_name)}"] += 1
                except Exception as exc:  # the API or the database failing for a moment: next pass
                    _log().error("template #%s: sync failed, tried again next pass: %s: %s",
                                 row.id, type(exc).__name__, str(exc)[:200])
                    outcome["template_retry"] += 1
    return outcome
