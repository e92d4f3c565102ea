"""Shared command line for the batch flows: run one under Prefect's API, print a summary.

Exit status: 0 when the batch finished (even with failed items), 1 when it failed or was
cancelled, 2 when the request was refused (bad input, another batch active).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["base_parser", "id_list", "run_cli", "run_items_cli", "print_failures", "quiet_prefect", "drain_ephemeral_api"]


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
        raise argparse.ArgumentTypeError(f"expected comma-separated integer ids, got {text!r}") from None


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
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


def run_cli(flow_fn: Callable[..., Any], parameters: dict[str, Any]) -> int:
    quiet_prefect()
    try:
        state = asyncio.run(flow_fn(**parameters, return_state=True))
    except Exception as exc:  # the run could not even start (API unreachable, parameters refused)
        first_line = (str(exc).splitlines() or [""])[0][:200]
        print(f"error: could not start the flow run: {type(exc).__name__}: {first_line}", file=sys.stderr)
        return 2
    drain_ephemeral_api()
    message = state.message or state.type.value
    if state.is_completed():
        print(message)
        print_failures(message, getattr(flow_fn, "name", ""))
        return 0
    print(f"error: {message}" if message.startswith("rejected:") else message, file=sys.stderr)
    print_failures(message, getattr(flow_fn, "name", ""))
    return 2 if message.startswith("rejected:") else 1


def print_failures(summary: str, flow_name: str, limit: int = 5) -> None:
    """Under a batch's summary line: why its first items failed (from the detail rows), and the retry command."""
    import re

    match = re.match(r"batch (\d+) \(", summary)
    if match is None:
        return
    from batchlib.settings import get_settings
    from db import get_engine, run_transaction
    from db.failures import failed_details

    batch_id = int(match[1])
    try:
        engine = get_engine(get_settings().database_url.get_secret_value())
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


def _items_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Any] | None:
    import json

    if args.items is None and args.items_file is None:
        return None
    try:
        if args.items_file is not None:
            with open(args.items_file, encoding="utf-8") as fh:
                value = json.load(fh)
        else:
            value = json.loads(args.items)
    except OSError as exc:
        parser.error(f"cannot read {args.items_file}: {exc.strerror}")
    except ValueError as exc:
        parser.error(f"items are not valid JSON: {exc}")
    if isinstance(value, dict) and "items" in value:  # a whole task_data object is fine too
        value = value["items"]
    if not isinstance(value, list):
        parser.error("items must be a JSON list of objects")
    return value


def run_items_cli(flow_fn: Callable[..., Any], prog: str, doc: str, argv: list[str] | None = None) -> int:
    """The command line of a type whose input is ``{"items": [...]}``: ``--items`` / ``--items-file``."""
    parser = base_parser(prog, doc.strip().splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--items", help='the items as JSON, e.g. \'[{"account_id": 1, ...}]\'')
    source.add_argument("--items-file", metavar="PATH", help="a JSON file holding the items list")
    args = parser.parse_args(argv)
    if args.resume is None and args.retry_failed is None and (
        args.tenant_id is None or (args.items is None and args.items_file is None)
    ):
        parser.error("give --tenant-id with --items or --items-file, --resume BATCH_ID or --retry-failed BATCH_ID")
    return run_cli(flow_fn, {
        "tenant_id": args.tenant_id, "items": _items_from_args(parser, args), "task_name": args.task_name,
        "create_admin_id": args.admin_id, "batch_id": args.resume, "takeover": args.takeover,
        "retry_failed_of": args.retry_failed,
    })
