"""account-check (批量验活): is each account of a tenant alive, banned or restricted?

    python -m flows.account_check --tenant-id 7 [--account-ids 1,2,3] [--resume 42]
"""

from __future__ import annotations

import sys

from flows.batch_cli import base_parser, id_list, run_cli
from flows.batch_runner import batch_flow, run_batch_flow
from flows.params import AccountIds, BatchId, CreateAdminId, Takeover, TaskName, TenantId

TASK_TYPE = "account_check"


@batch_flow("account-check")
async def account_check(
    tenant_id: TenantId = None,
    account_ids: AccountIds = None,
    task_name: TaskName = None,
    create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None,
    takeover: Takeover = False,
):
    """Check accounts of one tenant (all active ones unless ``account_ids`` is given).

    ``batch_id`` claims an existing batch row (inserted by the admin panel) or resumes a
    failed/cancelled one: only items still pending are processed. ``takeover`` also claims
    a batch still marked running whose run is gone (its lease expired): the old owner is
    fenced out.
    """
    task_data = {"account_ids": account_ids} if account_ids is not None else None
    return await run_batch_flow(
        TASK_TYPE, tenant_id=tenant_id, task_data=task_data, task_name=task_name,
        create_admin_id=create_admin_id, batch_id=batch_id, takeover=takeover,
    )


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("python -m flows.account_check", __doc__.splitlines()[0])
    parser.add_argument("--account-ids", type=id_list, help="comma-separated account ids (default: all)")
    args = parser.parse_args(argv)
    if args.tenant_id is None and args.resume is None:
        parser.error("give --tenant-id, or --resume BATCH_ID")
    return run_cli(account_check, {
        "tenant_id": args.tenant_id, "account_ids": args.account_ids, "task_name": args.task_name,
        "create_admin_id": args.admin_id, "batch_id": args.resume,
        "takeover": args.takeover,
    })


if __name__ == "__main__":
    sys.exit(main())
