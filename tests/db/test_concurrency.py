"""Eight writers recording overlapping outcomes for one batch, each in its own transactions."""

from __future__ import annotations

import random
import threading

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from batchcore.outcomes import ItemOutcome
from db import claim_batch, counters, record_outcomes, recount, run_transaction
from tests.db.helpers import detail_rows, new_batch, started_batch

N_ITEMS = 400
THREADS = 8


def test_overlapping_writers_keep_counters_exact(engine: Engine) -> None:
    claim = started_batch(engine, N_ITEMS)
    proposed: dict[int, set[str]] = {i: set() for i in range(1, N_ITEMS + 1)}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        items = rng.sample(range(1, N_ITEMS + 1), N_ITEMS * 3 // 4)
        try:
            for start in range(0, len(items), 40):
                batch = [
                    ItemOutcome(i, rng.choice(["success", "failed", "skipped"]), {"by": seed}, None)
                    for i in items[start : start + 40]
                ]
                with lock:
                    for o in batch:
                        proposed[o.item_id].add(o.status)
                run_transaction(
                    engine, lambda s, b=batch: record_outcomes(s, claim.batch_id, claim.fence, b)
                )
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rows = detail_rows(engine, claim.batch_id)
    assert len(rows) == N_ITEMS
    for item_id, (status, *_rest) in rows.items():
        if proposed[item_id]:
            assert status in proposed[item_id]
        else:
            assert status == "pending"
    with Session(engine) as s:
        assert counters(s, claim.batch_id) == recount(s, claim.batch_id)
        assert recount(s, claim.batch_id).pending == sum(1 for p in proposed.values() if not p)


def test_concurrent_claims_get_distinct_fences(engine: Engine) -> None:
    batch_id = new_batch(engine)
    fences: list[int] = []

    def claimer(n: int) -> None:
        claim = run_transaction(
            engine, lambda s: claim_batch(s, batch_id, owner=f"h:{n}", flow_run_id=None, takeover=True)
        )
        fences.append(claim.fence)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fences) == [1, 2, 3, 4, 5, 6]
