"""``python -m db upgrade [--url URL]`` / ``python -m db current [--url URL]``."""

from __future__ import annotations

import argparse
import logging
import sys

from db.migrate import current, upgrade


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db", description="Database migrations.")
    parser.add_argument("command", choices=["upgrade", "current"])
    parser.add_argument("--url", help="database URL (default: BATCH_DATABASE_URL)")
    parser.add_argument("--revision", default="head", help="target revision for upgrade")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "upgrade":
        upgrade(args.url, args.revision)
    print(current(args.url) or "<none>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
