"""Shared command line for the batch flows: run one under Prefect's API, print a summary.

Exit status: 0 when the batch finished (even with failed items), 1 when it failed or was
cancelled, 2 when the request was refused (bad input, another batch active). A refusal is one
line on stderr (``error: ...``), and nothing is written.

Items files (``--items-file``, ``--account-ids-file``) are not sent as flow parameters
(Prefect refuses parameters over 512 KiB): the run reads the file itself, so its path is passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from prefect import tags
from sqlalchemy.exc import InterfaceError, OperationalError

from batchcore.errors import InvalidInput
from batchcore.json_text import ITEMS_FILE_MAX_BYTES, check_value, decode_json
from batchcore.settings import get_settings
from batchlib.batch_types import get_batch_type
from batchlib.task_data import items_from_file, validate_request
from batchlib.validation import check_admin_id, check_task_name
from db import get_batch, get_engine, run_transaction
from db.failures import failed_details, retry_items

__all__ = [
    "OneLineParser", "base_parser", "id_list", "run_cli", "run_items_cli", "quiet_prefect", "drain_ephemeral_api",
    "refuse", "file_path", "print_failures",
]

# Prefect refuses flow-run parameters over 512 KiB; leave room for the other parameters.
PARAMETERS_MAX_BYTES = 500_000


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``error: ...``, exit 2), like every other refusal."""

    def error(self, message: str) -> NoReturn:
        refuse(f"{message} (see {self.prog} --help)")
        sys.exit(2)


def refuse(message: str) -> int:
    """Print a refusal as one line on stderr; returns exit status 2."""
    print("error: " + " ".join(str(message).split())[:500], file=sys.stderr)
    return 2


def quiet_prefect() -> None:
    """No telemetry from a loopback-only machine; no line per finished task run on the console."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.getLogger("prefect.task_runs").setLevel(logging.WARNING)


def drain_ephemeral_api(seconds: float = 3.0) -> None:
    """Without PREFECT_API_URL, Prefect serves a temporary API from this process and stops it
    at exit; give it a moment to record the last task-run events (it logs errors otherwise)."""
    if not os.environ.get("PREFECT_API_URL"):
        time.sleep(seconds)


def id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text[:60]!r}") from None


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--tenant-id", type=int, help="tenant whose accounts are processed")
    parser.add_argument("--resume", type=int, metavar="BATCH_ID", help="claim or resume this batch id")
    parser.add_argument("--task-name", help="name shown in the admin panel")
    parser.add_argument("--admin-id", type=int, default=0, help="create_admin_id of a new batch")
    parser.add_argument(
        "--takeover", action="store_true",
        help="with --resume: take over a batch still marked running whose run is gone (its lease expired); "
        "the old owner is fenced out",
    )
    parser.add_argument(
        "--retry-failed", type=int, metavar="BATCH_ID",
        help="start a new batch of the failed items of this finished batch (each keeps its previous error)",
    )
    return parser


def _parameters_problem(parameters: dict[str, Any]) -> str | None:
    """What Prefect's API or the mirror could not take, found before a flow run is created."""
    try:
        check_task_name(parameters.get("task_name"))
        check_admin_id(parameters.get("create_admin_id", 0))
        for name, value in parameters.items():
            check_value(value, name.replace("_", " "))
    except InvalidInput as exc:
        return str(exc)
    size = len(json.dumps(parameters, ensure_ascii=False).encode())
    if size > PARAMETERS_MAX_BYTES:
        return (f"the request is {size} bytes, more than a flow run's parameters may hold (512 KiB): "
                "put the items in a file and pass --items-file / --account-ids-file")
    return None


def _tenant_problem(parameters: dict[str, Any]) -> str | None:
    """Every run names its tenant (the UI's form requires it): ``--resume`` / ``--retry-failed``
    without ``--tenant-id`` take the tenant of the batch they name, read here."""
    if parameters.get("tenant_id") is not None:
        return None
    batch_id = next((parameters[k] for k in ("batch_id", "retry_failed_of") if parameters.get(k) is not None), None)
    if batch_id is None:
        return "give --tenant-id"
    try:
        row = run_transaction(get_engine(), lambda s: get_batch(s, batch_id))
    except (OperationalError, InterfaceError) as exc:
        return f"could not read batch {batch_id}: the database is unreachable ({type(exc).__name__})"
    if row is None or row.delete_time is not None:
        return f"rejected: batch {batch_id} does not exist"
    parameters["tenant_id"] = int(row.tenant_id)
    return None


def _request_problem(task_type: str, parameters: dict[str, Any]) -> str | None:
    """A new batch's request checked here, read-only, as its run will check it first: a refusal
    is then one line, with no flow run (and none of its log lines) at all."""
    if parameters.get("batch_id") is not None or parameters.get("tenant_id") is None:
        return None  # a resume, or a request the run refuses in one line anyway
    if parameters.get("retry_failed_of") is not None:  # a retry: the old batch must have ended with failures
        return _checked(lambda s: retry_items(s, parameters["retry_failed_of"], parameters["tenant_id"], task_type))
    settings = get_settings()
    batch_type = get_batch_type(task_type)
    task_data = {k: parameters[k] for k in batch_type.inputs if parameters.get(k) is not None} or None
    path = parameters.get("items_file") or parameters.get("account_ids_file")
    try:
        if path is not None:
            task_data = {batch_type.staged_as or "items": items_from_file(settings, batch_type, path)}
    except InvalidInput as exc:
        return f"rejected: {exc}"
    return _checked(lambda s: validate_request(
        s, batch_type, parameters["tenant_id"], task_data, settings,
        task_name=parameters.get("task_name"), create_admin_id=parameters.get("create_admin_id", 0),
    ))


def _checked(check: Callable[[Any], Any]) -> str | None:
    """A read-only check in one transaction: its refusal as one line, else None (the run reports
    a database that is down)."""
    try:
        run_transaction(get_engine(), check)
    except InvalidInput as exc:
        return f"rejected: {exc}"
    except (OperationalError, InterfaceError):
        return None
    return None


def run_cli(flow_fn: Callable[..., Any], parameters: dict[str, Any], task_type: str | None = None) -> int:
    """Run ``flow_fn`` with ``parameters``; with ``task_type``, a new batch's request is checked
    before the flow run is created."""
    problem = (_parameters_problem(parameters) or _tenant_problem(parameters)
               or (task_type and _request_problem(task_type, parameters)))
    if problem:
        return refuse(problem)
    quiet_prefect()
    # The tags a deployment run gets from its deployment (and the maintenance flow adds), so
    # the UI's tag filter `batch` finds runs started from this command line too.
    labels = ["batch", flow_fn.name.replace("-", "_"), "cli"]
    labels += [f"{k.split('_')[0]}-{parameters[k]}" for k in ("tenant_id", "batch_id") if parameters.get(k) is not None]
    try:
        with tags(*labels):
            state = asyncio.run(flow_fn(**parameters, return_state=True))
    except Exception as exc:  # the run could not even start (API unreachable, parameters refused)
        first_line = (str(exc).splitlines() or [""])[0][:200]
        return refuse(f"could not start the flow run: {type(exc).__name__}: {first_line}")
    drain_ephemeral_api()
    message = " ".join((state.message or state.type.value).split())
    if state.is_completed():
        print(message)
        print_failures(message, getattr(flow_fn, "name", ""))
        return 0
    if message.startswith(("rejected:", "Validation of flow parameters failed")):
        return refuse(message)
    print(message, file=sys.stderr)
    print_failures(message, getattr(flow_fn, "name", ""))
    return 1


def print_failures(summary: str, flow_name: str, limit: int = 5) -> None:
    """Under a batch's summary line: why its first items failed (from the detail rows), and the retry command."""
    match = re.match(r"batch (\d+) \(", summary)
    if match is None:
        return
    batch_id = int(match[1])
    try:
        engine = get_engine()
        count, first = run_transaction(engine, lambda s: failed_details(s, batch_id, limit))
    except Exception as exc:  # the summary is printed already; the details are a bonus
        print(f"(could not read the failed items: {type(exc).__name__})")
        return
    if not count:
        return
    print(f"{count} item(s) failed" + (f"; the first {len(first)}:" if count > len(first) else ":"))
    for item_id, _, error in first:
        print(f"  item {item_id}: {error}")
    module = flow_name.replace("-", "_") or "<type>"
    print(f"retry only those: python -m flows.{module} --retry-failed {batch_id}")


def file_path(parser: argparse.ArgumentParser, path: str | None) -> str | None:
    """An items file given on the command line, as the absolute path the run reads."""
    if path is None:
        return None
    if not os.path.isfile(path):
        parser.error(f"no such file: {path}")
    return os.path.abspath(path)


def _inline_items(parser: argparse.ArgumentParser, text: str | None) -> list[Any] | None:
    """``--items`` JSON: a list of objects (or a whole ``{"items": [...]}`` task_data)."""
    if text is None:
        return None
    try:
        value = decode_json(text, what="--items", max_bytes=ITEMS_FILE_MAX_BYTES)
    except InvalidInput as exc:
        parser.error(str(exc))
    if isinstance(value, dict) and set(value) == {"items"}:  # a whole task_data object is fine too
        value = value["items"]
    if not isinstance(value, list):
        parser.error("--items must be a JSON list of objects")
    bad = next((n for n, item in enumerate(value) if not isinstance(item, dict)), None)
    if bad is not None:
        parser.error(f"--items: item {bad} must be an object, got {type(value[bad]).__name__}")
    return value


def run_items_cli(flow_fn: Callable[..., Any], prog: str, doc: str, argv: list[str] | None = None) -> int:
    """The command line of a type whose input is ``{"items": [...]}``: ``--items`` / ``--items-file``."""
    parser = base_parser(prog, doc.strip().splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--items", help='the items as JSON, e.g. \'[{"account_id": 1, ...}]\'')
    source.add_argument("--items-file", metavar="PATH",
                        help="a JSON list of item objects, or a CSV file with a header line (any number of items)")
    args = parser.parse_args(argv)
    if args.resume is None and args.retry_failed is None and (
        args.tenant_id is None or (args.items is None and args.items_file is None)
    ):
        parser.error("give --tenant-id with --items or --items-file, --resume BATCH_ID or --retry-failed BATCH_ID")
    parameters = {
        "tenant_id": args.tenant_id, "items": _inline_items(parser, args.items), "task_name": args.task_name,
        "create_admin_id": args.admin_id, "batch_id": args.resume, "takeover": args.takeover,
        "retry_failed_of": args.retry_failed,
    }
    if args.items_file is not None:
        parameters["items_file"] = file_path(parser, args.items_file)
    return run_cli(flow_fn, parameters, getattr(flow_fn, "fn", flow_fn).__name__)  # the function is named by its type
