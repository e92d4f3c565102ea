"""nickname-change: Set the nickname of many accounts of one tenant (批量昵称修改).

    python -m flows.nickname_change --tenant-id 7 --items '[{"account_id": 700001, "nickname": "Alice"}]'
    python -m flows.nickname_change --tenant-id 7 --items-file items.json
    python -m flows.nickname_change --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import batch_flow, run_items_flow
from flows.params import BatchId, CreateAdminId, Items, ItemsFile, RetryFailedOf, Takeover, TaskName, TenantId

TASK_TYPE = "nickname_change"


@batch_flow("nickname-change")
async def nickname_change(
    tenant_id: TenantId = None,
    items: Items = None,
    task_name: TaskName = None,
    create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None,
    takeover: Takeover = False,
    items_file: ItemsFile = None,
    retry_failed_of: RetryFailedOf = None,
):
    """Set the nickname of accounts of one tenant.

    ``items``: ``[{"account_id": ..., "nickname": ...}, ...]``, one per account of the tenant.

    ``items_file``: instead of ``items``, the path of a JSON or CSV file of items on the host
    running the flow (a worker reads only under ``BATCH_ITEMS_DIR`` when that is set); its items
    go to the detail rows and the batch row keeps their count.

    ``batch_id`` claims an existing batch row (inserted by the admin panel) or resumes a
    failed/cancelled one: only items still pending are processed. ``takeover`` also claims
    a batch still marked running whose run is gone (its lease expired): the old owner is
    fenced out. ``retry_failed_of`` starts a new batch of the failed items of that finished batch.
    """
    return await run_items_flow(
        TASK_TYPE, tenant_id=tenant_id, items=items, task_name=task_name,
        create_admin_id=create_admin_id, batch_id=batch_id, takeover=takeover,
        items_file=items_file, retry_failed_of=retry_failed_of,
    )


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(nickname_change, "python -m flows.nickname_change", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
