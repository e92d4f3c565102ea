"""add-friend: Send a friend request from many accounts of one tenant (批量加好友), within a daily cap per account.

    python -m flows.add_friend --tenant-id 7 --items '[{"account_id": 700001, "friend_uid": "u7-000002"}]'
    python -m flows.add_friend --tenant-id 7 --items-file items.json
    python -m flows.add_friend --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import batch_flow, run_items_flow
from flows.params import BatchId, CreateAdminId, Items, ItemsFile, RetryFailedOf, Takeover, TaskName, TenantId

TASK_TYPE = "add_friend"


@batch_flow(TASK_TYPE)
async def add_friend(
    tenant_id: TenantId, items: Items = None, task_name: TaskName = None, create_admin_id: CreateAdminId = 0,
    batch_id: BatchId = None, takeover: Takeover = False, items_file: ItemsFile = None,
    retry_failed_of: RetryFailedOf = None,
):
    """Send friend requests from accounts of one tenant (within the daily cap per account). ``items``: ``[{"account_id": ..., "friend_uid": ...}, ...]``,
    one per account of the tenant (or ``items_file``); the other parameters as for every batch type."""
    return await run_items_flow(TASK_TYPE, **locals())


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(add_friend, "python -m flows.add_friend", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
