"""nightly-check: one account-check deployment run per tenant that has accounts.

    python -m flows.nightly_check

A tenant whose account_check batch is still active (pending or running) is skipped; a run
that races another one of its tenant is refused by the one-active-batch guard, so a tenant
never has two checks at once. Runs are created with ``timeout=0`` (this flow does not
wait) and an idempotency key per (this flow run, tenant): a retry starts nothing twice.
"""

from __future__ import annotations

import sys
import time

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from db import find_active, get_engine, run_transaction, tenants_with_accounts
from flows.dispatcher import deployment_for
from tasks.maintenance import start_tenant_run

__all__ = ["nightly_check"]

TASK_TYPE = "account_check"


@flow(name="nightly-check")
def nightly_check() -> dict:
    logger = get_run_logger()
    deployment = deployment_for(TASK_TYPE)
    assert deployment is not None
    engine = get_engine()
    tenants = run_transaction(engine, tenants_with_accounts)
    run_key = flow_run.get_id() or f"local-{int(time.time())}"
    started, skipped = {}, {}
    for tenant_id in tenants:
        active = run_transaction(engine, lambda s: find_active(s, tenant_id, TASK_TYPE))
        if active is not None:
            skipped[tenant_id] = active
            logger.info("tenant %s skipped: batch %s is still active", tenant_id, active)
            continue
        started[tenant_id] = start_tenant_run(
            deployment, tenant_id, {"task_name": f"Nightly liveness check {time.strftime('%Y-%m-%d')}"},
            f"nightly-{run_key}-tenant-{tenant_id}",
        )
    logger.info("nightly check: %s runs started, %s tenants skipped", len(started), len(skipped))
    return {"started": started, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    print(nightly_check())
    return 0


if __name__ == "__main__":
    sys.exit(main())
