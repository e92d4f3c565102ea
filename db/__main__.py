"""``python -m db upgrade|current [--url URL]`` / ``python -m db import-accounts FILE [--url URL]``.

Exit status 2 with one line on stderr when the request is refused (the accounts table is not
what the ``BATCH_ACCOUNT_*`` settings describe, a bad accounts file); nothing is written then.
"""

from __future__ import annotations

import argparse
import logging
import sys

from sqlalchemy.exc import DBAPIError

from batchcore.account_file import read_accounts_file
from batchcore.errors import BatchError, InvalidInput
from db.account_table import accounts_table
from db.accounts import import_accounts
from db.engine import get_engine
from db.migrate import current, resolve_url, upgrade
from db.retry import run_transaction


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db", description="Database migrations and account import.")
    parser.add_argument("command", choices=["upgrade", "current", "import-accounts"])
    parser.add_argument("file", nargs="?", help="import-accounts: the CSV or JSON file of accounts")
    parser.add_argument("--url", help="database URL (default: BATCH_DATABASE_URL)")
    parser.add_argument("--revision", default="head", help="target revision for upgrade")
    parser.add_argument(
        "--into-adopted", action="store_true",
        help="import-accounts: write into an adopted accounts table (BATCH_ACCOUNT_* set) too",
    )
    args = parser.parse_args(argv)
    if (args.command == "import-accounts") != (args.file is not None):
        parser.error("a FILE is given with import-accounts, and only there")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if args.command == "import-accounts":
            print(import_file(args.file, args.url, into_adopted=args.into_adopted))
            return 0
        if args.command == "upgrade":
            upgrade(args.url, args.revision)
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DBAPIError as exc:  # e.g. an adopted table with a NOT NULL column we do not fill
        code = getattr(exc.orig, "args", [None])[0]
        print(f"error: the database refused the write ({type(exc.orig).__name__} {code}); nothing was written",
              file=sys.stderr)
        return 2
    print(current(args.url) or "<none>")
    return 0


def import_file(path: str, url: str | None = None, *, into_adopted: bool = False) -> str:
    """Check every row of the file, then write them all in one transaction; returns a summary line."""
    accounts = accounts_table()
    if not accounts.spec.is_default and not into_adopted:
        raise InvalidInput(
            f"the accounts table {accounts.spec.table} is adopted (BATCH_ACCOUNT_* settings): the admin "
            "system manages its rows; pass --into-adopted to import into it anyway"
        )
    rows = read_accounts_file(path)
    engine = get_engine(resolve_url(url))  # checks the accounts table first
    ids = run_transaction(engine, lambda s: import_accounts(s, rows))
    tenants = len({r["tenant_id"] for r in rows})
    return f"imported {len(ids)} accounts of {tenants} tenant(s) into {accounts.spec.table}"


if __name__ == "__main__":
    sys.exit(main())
