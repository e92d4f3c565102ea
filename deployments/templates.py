"""Batch templates: a named set of parameters for a (tenant, type), run on a schedule or on demand.

    python -m deployments.templates add --name nightly-7-nicknames --type nickname_change --tenant-id 7 \\
        --items-file f.json --cron "0 3 * * *" [--timezone UTC]
    python -m deployments.templates add --name check-7 --type account_check --tenant-id 7 [--account-ids 1,2] --cron ...
    python -m deployments.templates list
    python -m deployments.templates run --name nightly-7-nicknames --type nickname_change   # now, once
    python -m deployments.templates remove --name nightly-7-nicknames --type nickname_change

A template is a schedule of the type's deployment whose slug is the template's name and whose
parameters are the batch's: the Prefect UI shows it on the deployment's page, with its
parameters, and runs it like any scheduled run. The parameters are validated when the template
is saved (unknown tenant, accounts of another tenant, malformed items: refused in one line,
exit 2, nothing saved), so a template does not fail when it fires for a reason known today.

The admin panel saves its templates as la_batch_template rows instead; the maintenance run
mirrors them into schedules the same way (tasks/templates_sync.py). ``list`` shows both
(``cli`` or ``panel #<row id>``); ``run`` starts either; ``remove`` refuses a panel template
(delete the row in the panel, or the next sync would bring it back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

__all__ = ["main", "validate", "template_parameters", "cron_schedule"]


def template_parameters(task_type: str, tenant_id: int, account_ids: list[int] | None, items: list | None) -> dict:
    if task_type == "account_check":
        return {"tenant_id": tenant_id, **({"account_ids": account_ids} if account_ids is not None else {})}
    return {"tenant_id": tenant_id, "items": items}


def cron_schedule(cron: Any, timezone: Any) -> tuple[Any, str | None]:
    """(the CronSchedule, None), or (None, why the cron or time zone is refused, one line)."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        return CronSchedule(cron=cron, timezone=timezone), None
    except ValidationError as exc:
        message = str(exc.errors()[0].get("msg", "")).removeprefix("Value error, ")
        return None, " ".join(message.split())[:200]
    except (TypeError, ValueError) as exc:
        return None, " ".join(str(exc).split())[:200]


def validate(task_type: str, parameters: dict[str, Any]) -> None:
    """Raise InvalidInput (a BatchError) when the batch these parameters start would be refused.

    The checks of a batch start, read-only (``validate_request``): the type's task_data keys,
    the task name and admin id, then the type's ``parse`` against the mirror (unknown tenant,
    accounts of another tenant, malformed items). The CLI's ``add`` and the panel templates'
    sync (tasks/templates_sync.py) both call this.
    """
    from batchcore.settings import get_settings
    from batchlib.batch_types import get_batch_type
    from batchlib.task_data import validate_request
    from db import get_engine, run_transaction

    settings = get_settings()
    batch_type = get_batch_type(task_type)
    task_data = {k: v for k, v in parameters.items() if k not in _NOT_TASK_DATA}
    engine = get_engine(settings.database_url.get_secret_value())
    run_transaction(engine, lambda s: validate_request(
        s, batch_type, parameters.get("tenant_id"), task_data or None, settings,
        task_name=parameters.get("task_name"), create_admin_id=parameters.get("create_admin_id", 0),
    ))


_NOT_TASK_DATA = ("tenant_id", "task_name", "create_admin_id")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deployments.templates", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="validate and save a template as a schedule of the type's deployment")
    add.add_argument("--name", required=True)
    add.add_argument("--type", required=True, dest="task_type")
    add.add_argument("--tenant-id", required=True, type=int)
    add.add_argument("--account-ids", help="account_check: comma-separated ids (default: every active account)")
    add.add_argument("--items-file", metavar="PATH", help="the items list (JSON) of the other types")
    add.add_argument("--cron", required=True)
    add.add_argument("--timezone", default="UTC")
    sub.add_parser("list", help="every template of every batch deployment")
    for name, text in (("run", "start a run of a template now"), ("remove", "delete a template")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--name", required=True)
        cmd.add_argument("--type", required=True, dest="task_type")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_command(args))
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class _Refused(Exception):
    pass


async def _command(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        if args.command == "list":
            return await _list(client)
        deployment = await _deployment(client, args.task_type)
        schedules = await client.read_deployment_schedules(deployment.id)
        mine = [s for s in schedules if s.slug == args.name]
        if args.command == "add":
            if mine:
                raise _Refused(f"template {args.name!r} already exists on {args.task_type}; remove it first")
            parameters = _checked_parameters(args)
            schedule, problem = cron_schedule(args.cron, args.timezone)
            if problem is not None:
                raise _Refused(f"invalid --cron/--timezone: {problem}")
            await client.create_deployment_schedules(
                deployment.id, [(schedule, True)], parameters=parameters, slug=args.name
            )
            print(f"template {args.name!r}: {args.task_type} for tenant {args.tenant_id}, '{args.cron}' ({args.timezone})")
            return 0
        if not mine:
            raise _Refused(f"no template {args.name!r} on {args.task_type}")
        if args.command == "remove":
            owner = _panel_owned().get(str(mine[0].id))
            if owner is not None:
                raise _Refused(f"template {args.name!r} is the admin panel's (la_batch_template #{owner}): "
                               "delete it in the panel")
            await client.delete_deployment_schedule(deployment.id, mine[0].id)
            print(f"template {args.name!r} removed")
            return 0
        tenant_id = mine[0].parameters.get("tenant_id")
        run = await client.create_flow_run_from_deployment(
            deployment.id, parameters=mine[0].parameters, tags=[f"tenant-{tenant_id}", "template"],
            name=f"{deployment.name}-tenant-{tenant_id}",
        )
        print(f"template {args.name!r}: flow run {run.name} ({run.id})")
        return 0


def _checked_parameters(args: argparse.Namespace) -> dict[str, Any]:
    from batchcore.errors import BatchError
    from flows.batch_cli import id_list

    account_ids = items = None
    try:
        if args.task_type == "account_check" and args.account_ids:
            account_ids = id_list(args.account_ids)
        if args.task_type != "account_check":
            if not args.items_file:
                raise _Refused(f"{args.task_type} needs --items-file")
            with open(args.items_file, encoding="utf-8") as fh:
                items = json.load(fh)
    except OSError as exc:
        raise _Refused(f"cannot read {args.items_file}: {exc.strerror}") from None
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise _Refused(f"invalid input: {str(exc).splitlines()[0]}") from None
    if isinstance(items, dict) and "items" in items:
        items = items["items"]
    parameters = template_parameters(args.task_type, args.tenant_id, account_ids, items)
    try:
        validate(args.task_type, parameters)
    except BatchError as exc:
        raise _Refused(f"template refused: {exc}") from None
    return parameters


async def _deployment(client, task_type: str):
    from flows.dispatcher import deployment_for

    name = deployment_for(task_type)
    if name is None:
        raise _Refused(f"unknown batch type {task_type!r}")
    try:
        return await client.read_deployment_by_name(name)
    except Exception:
        raise _Refused(f"deployment {name} not found on the Prefect server (python -m deployments.bootstrap --deploy)") from None


async def _list(client) -> int:
    from flows.dispatcher import DEPLOYMENTS

    owned = _panel_owned()
    for task_type, name in sorted(DEPLOYMENTS.items()):
        try:
            deployment = await client.read_deployment_by_name(name)
        except Exception:
            continue
        for s in await client.read_deployment_schedules(deployment.id):
            if s.slug:
                source = f"panel #{owned[str(s.id)]}" if str(s.id) in owned else "cli"
                state = "" if s.active else "  (paused)"
                print(f"{s.slug}  {task_type}  {getattr(s.schedule, 'cron', s.schedule)}  {source}  "
                      f"{json.dumps(s.parameters)}{state}")
    return 0


def _panel_owned() -> dict[str, int]:
    """Schedule id -> the la_batch_template row that owns it ({} before migration 0011)."""
    from sqlalchemy.exc import DBAPIError

    from batchcore.settings import get_settings
    from db import get_engine, run_transaction
    from db.templates import owned_schedules

    try:
        return run_transaction(get_engine(get_settings().database_url.get_secret_value()), owned_schedules)
    except DBAPIError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
