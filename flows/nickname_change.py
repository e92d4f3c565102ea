"""nickname-change: Set the nickname of many accounts of one tenant (批量昵称修改).

    python -m flows.nickname_change --tenant-id 7 --items '[{"account_id": 700001, "nickname": "Alice"}]'
    python -m flows.nickname_change --tenant-id 7 --items-file items.json
    python -m flows.nickname_change --resume 42
"""

from __future__ import annotations

import sys

from flows.batch_cli import run_items_cli
from flows.batch_runner import items_flow

nickname_change = items_flow("nickname-change", "nickname_change", '``[{"account_id": ..., "nickname": ...}, ...]``')


def main(argv: list[str] | None = None) -> int:
    return run_items_cli(nickname_change, "python -m flows.nickname_change", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
