"""avatar-change: Set the avatar of many accounts of one tenant (批量头像更换).

    python -m flows.avatar_change --tenant-id 7 --items '[{"account_id": 700001, "avatar_url": "https://img.example.com/a.png"}]'
    python -m flows.avatar_change --tenant-id 7 --items-file items.json
    python -m flows.avatar_change --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import items_flow

avatar_change = items_flow("avatar-change", "avatar_change", '``[{"account_id": ..., "avatar_url": ...}, ...]``')


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(avatar_change, "python -m flows.avatar_change", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
