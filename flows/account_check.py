"""account-check (批量验活): is each account of a tenant alive, banned or restricted?

    python -m flows.account_check --tenant-id 7 [--account-ids 1,2,3] [--resume 42]
    python -m flows.account_check --tenant-id 7 --account-ids-file ids.csv   # any number of ids
    python -m flows.account_check --retry-failed 42     # a new batch of 42's failed items
"""

from __future__ import annotations

import sys

from flows.batch_cli import base_parser, file_path, id_list, run_cli
from flows.batch_runner import batch_flow, retry_request, run_batch_flow
from flows.params import (
    AccountIds,
    AccountIdsFile,
    BatchId,
    CreateAdminId,
    RetryFailedOf,
    Takeover,
    TaskName,
    TenantId,
)

TASK_TYPE = "account_check"


@batch_flow(TASK_TYPE)
async def account_check(
    tenant_id: TenantId,
    account_ids: AccountIds = None,
    task_name: TaskName = None,
    create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None,
    takeover: Takeover = False,
    account_ids_file: AccountIdsFile = None,
    retry_failed_of: RetryFailedOf = None,
):
    """Check accounts of one tenant (all active ones unless ``account_ids`` is given).

    ``account_ids_file``: instead of ``account_ids``, the path of a file of ids (a JSON list, or
    one id per line) on the host running the flow (a worker reads only under ``BATCH_ITEMS_DIR``
    when that is set); the ids go to the detail rows and the batch row keeps their count.

    ``batch_id`` claims an existing batch row (inserted by the admin panel) or resumes a
    failed/cancelled one: only items still pending are processed. ``takeover`` also claims
    a batch still marked running whose run is gone (its lease expired): the old owner is
    fenced out. ``retry_failed_of`` starts a new batch of the failed items of that finished batch.
    """
    task_data = retry_request(retry_failed_of) or ({"account_ids": account_ids} if account_ids is not None else None)
    return await run_batch_flow(
        TASK_TYPE, tenant_id=tenant_id, task_data=task_data, task_name=task_name,
        create_admin_id=create_admin_id, batch_id=batch_id, takeover=takeover, items_file=account_ids_file,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m flows.account_check", __doc__.splitlines()[0])
    ids = parser.add_mutually_exclusive_group()
    ids.add_argument("--account-ids", type=id_list, help="comma-separated account ids (default: all)")
    ids.add_argument("--account-ids-file", metavar="PATH", help="a JSON list of ids, or one id per line")
    args = parser.parse_args(argv)
    if args.tenant_id is None and args.resume is None and args.retry_failed is None:
        parser.error("give --tenant-id, --resume BATCH_ID or --retry-failed BATCH_ID")
    parameters = {
        "tenant_id": args.tenant_id, "account_ids": args.account_ids, "task_name": args.task_name,
        "create_admin_id": args.admin_id, "batch_id": args.resume,
        "takeover": args.takeover, "retry_failed_of": args.retry_failed,
    }
    if args.account_ids_file is not None:
        parameters["account_ids_file"] = file_path(parser, args.account_ids_file)
    return run_cli(account_check, parameters, TASK_TYPE)


if __name__ == "__main__":
    sys.exit(main())
