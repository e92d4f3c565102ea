"""add-friend: Send a friend request from many accounts of one tenant (批量加好友), within a daily cap per account.

    python -m flows.add_friend --tenant-id 7 --items '[{"account_id": 700001, "friend_uid": "u7-000002"}]'
    python -m flows.add_friend --tenant-id 7 --items-file items.json
    python -m flows.add_friend --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import items_flow

add_friend = items_flow("add-friend", "add_friend", '``[{"account_id": ..., "friend_uid": ...}, ...]``')


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(add_friend, "python -m flows.add_friend", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
