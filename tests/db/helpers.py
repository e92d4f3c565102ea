"""Small builders shared by the db tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from db import add_details, claim_batch, create_batch, run_transaction, set_total
from db._util import DETAIL
from db.mirror import Claim


def new_batch(engine: Engine, tenant_id: int = 1, task_type: str = "account_check", **kw: Any) -> int:
    return run_transaction(
        engine,
        lambda s: create_batch(
            s,
            tenant_id=tenant_id,
            task_type=task_type,
            task_name=kw.get("task_name", "test batch"),
            create_admin_id=kw.get("create_admin_id", 1),
            task_data=kw.get("task_data", {"account_ids": [1, 2, 3]}),
            now=kw.get("now"),
        ),
    )


def started_batch(engine: Engine, n_items: int, tenant_id: int = 1, task_type: str = "account_check") -> Claim:
    """A created, claimed batch with details 1..n_items and total_count set."""
    batch_id = new_batch(engine, tenant_id, task_type)

    def start(s: Any) -> Claim:
        claim = claim_batch(s, batch_id, owner="test:1", flow_run_id="fr-1")
        add_details(s, batch_id, claim.fence, [(i, {"account_id": i}) for i in range(1, n_items + 1)])
        set_total(s, batch_id, claim.fence)
        return claim

    return run_transaction(engine, start)


def detail_rows(engine: Engine, batch_id: int) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(DETAIL.c.item_id, DETAIL.c.status, DETAIL.c.result, DETAIL.c.error_message, DETAIL.c.process_time)
            .where(DETAIL.c.task_id == batch_id)
        ).all()
    return {r[0]: tuple(r[1:]) for r in rows}
