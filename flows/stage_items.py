"""stage_items: upload a batch's items into the mirror as a pending batch, without running it.

    python -m flows.stage_items --type nickname_change --tenant-id 7 items.csv
    python -m flows.stage_items --type account_check --tenant-id 7 ids.txt --task-name "Recheck"

The file is read and validated here exactly as a run would (tenant, accounts, every item),
then one transaction writes a ``pending`` la_batch_task row whose task_data is the summary
``{"items_count": N, "source": "staged:<file>"}`` and one pending detail row per item
(``item_data`` = the item), as the admin panel may do in SQL. It prints the batch id. The
batch starts like any panel row: the dispatcher picks it up, or start it by hand with the
deployment's ``batch_id`` parameter (Prefect UI) or ``--resume <id>``.

Exit status 0 with the batch id on stdout; 2 with one line on stderr when refused (nothing written).
"""

from __future__ import annotations

import os
import sys

from sqlalchemy.exc import InterfaceError, OperationalError

from batchcore.errors import BatchError
from batchcore.settings import get_settings
from batchlib.batch_types import batch_type_names, get_batch_type
from batchlib.task_data import read_items_file, summary
from batchlib.validation import check_admin_id, check_task_name
from db import create_batch, get_engine, run_transaction, stage_details
from flows.batch_cli import OneLineParser, file_path, refuse

__all__ = ["main", "stage"]


def stage(task_type: str, tenant_id: int, path: str, *, task_name: str | None = None, admin_id: int = 0) -> int:
    """Validate the file's items for ``task_type`` and write the pending batch; its id."""
    settings = get_settings()
    batch_type = get_batch_type(task_type)
    if batch_type.staged_as is None:
        raise BatchError(f"{task_type} takes no items")
    name = check_task_name(task_name) or f"{batch_type.title} (tenant {tenant_id}, staged)"
    admin_id = check_admin_id(admin_id)
    request = {batch_type.staged_as: read_items_file(path, columns=batch_type.item_keys)}
    engine = get_engine()
    items = run_transaction(engine, lambda s: batch_type.parse(s, tenant_id, request, settings))
    if not items:
        raise BatchError("the file holds no items")

    def write(session) -> int:
        batch_id = create_batch(
            session, tenant_id=tenant_id, task_type=task_type, task_name=name, create_admin_id=admin_id,
            task_data=summary(len(items), f"staged:{os.path.basename(path)}"),
        )
        step = settings.detail_insert_chunk
        for start in range(0, len(items), step):
            stage_details(session, batch_id, items[start : start + step])
        return batch_id

    return run_transaction(engine, write)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m flows.stage_items", description=__doc__.splitlines()[0])
    parser.add_argument("--type", required=True, choices=batch_type_names(), metavar="TASK_TYPE",
                        help="batch type: " + ", ".join(batch_type_names()))
    parser.add_argument("--tenant-id", type=int, required=True)
    parser.add_argument("--task-name", help="name shown in the admin panel")
    parser.add_argument("--admin-id", type=int, default=0, help="create_admin_id of the batch")
    parser.add_argument("file", help="JSON list or CSV file of items (or of account ids for account_check)")
    args = parser.parse_args(argv)
    try:
        batch_id = stage(args.type, args.tenant_id, file_path(parser, args.file),
                         task_name=args.task_name, admin_id=args.admin_id)
    except BatchError as exc:
        return refuse(str(exc))
    except (OperationalError, InterfaceError) as exc:
        return refuse(f"the mirror database is unreachable ({type(exc).__name__}); nothing was staged")
    print(batch_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
