"""prune: remove finished batches (and their details) older than the retention window.

    python -m flows.prune [--days 30] [--soft]

Hard delete (default, ``BATCH_PRUNE_HARD_DELETE=true``) removes detail rows, run rows and
the batch; soft delete sets ``delete_time`` as the admin panel does. Each chunk of
``BATCH_PRUNE_CHUNK`` batches is one short transaction; pending and running batches are
never touched.
"""

from __future__ import annotations

import argparse
import sys
import time

from prefect import flow, get_run_logger

from batchcore.settings import get_settings
from tasks.maintenance import prune_chunk

__all__ = ["prune"]


@flow(name="prune")
def prune(older_than_days: int | None = None, hard_delete: bool | None = None, chunk: int | None = None) -> int:
    settings = get_settings()
    days = older_than_days if older_than_days is not None else settings.prune_after_days
    hard = settings.prune_hard_delete if hard_delete is None else hard_delete
    size = chunk or settings.prune_chunk
    before = int(time.time()) - days * 86_400
    removed = 0
    while True:
        n = prune_chunk(before, size, hard)
        removed += n
        if n < size:
            break
    get_run_logger().info(
        "%s %s finished batches that ended more than %s days ago", "deleted" if hard else "soft-deleted", removed, days
    )
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.prune", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, help="age in days (default: BATCH_PRUNE_AFTER_DAYS)")
    parser.add_argument("--soft", action="store_true", help="set delete_time instead of deleting")
    args = parser.parse_args(argv)
    print(prune(older_than_days=args.days, hard_delete=False if args.soft else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
