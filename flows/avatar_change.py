"""avatar-change: Set the avatar of many accounts of one tenant (批量头像更换).

    python -m flows.avatar_change --tenant-id 7 --items '[{"account_id": 700001, "avatar_url": "https://img.example.com/a.png"}]'
    python -m flows.avatar_change --tenant-id 7 --items-file items.json
    python -m flows.avatar_change --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import batch_flow, run_items_flow
from flows.params import BatchId, CreateAdminId, Items, ItemsFile, RetryFailedOf, Takeover, TaskName, TenantId

TASK_TYPE = "avatar_change"


@batch_flow(TASK_TYPE)
async def avatar_change(
    tenant_id: TenantId, items: Items = None, task_name: TaskName = None, create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None, takeover: Takeover = False, items_file: ItemsFile = None,
    retry_failed_of: RetryFailedOf = None,
):
    """Set the avatar of accounts of one tenant. ``items``: ``[{"account_id": ..., "avatar_url": ...}, ...]``,
    one per account of the tenant (or ``items_file``); the other parameters as for every batch type."""
    return await run_items_flow(TASK_TYPE, **locals())


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(avatar_change, "python -m flows.avatar_change", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
