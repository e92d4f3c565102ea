"""The counters under interleaved faults: a hypothesis state machine against the real MariaDB.

Rules interleave recording outcomes, recording them again, a transaction that dies between
its statements (rolled back midway), a commit whose acknowledgement is lost (the transaction
re-run), a takeover, a stale owner's write, and a reap followed by a resume. After every step
the invariants hold: I3 (processed = success + failed, counters == a GROUP BY recount), every
detail row as the model says (0 items recorded twice, 0 lost), and la_batch_run.fence equal to
the model's fence (a stale fence writes 0 rows).
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

from batchcore.errors import StaleFence
from batchcore.outcomes import ItemOutcome
from db import (
    add_details,
    claim_batch,
    counters,
    create_batch,
    mark_failed_unowned,
    record_outcomes,
    recount,
    run_transaction,
    set_total,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

N = 12
items = st.lists(st.integers(1, N), min_size=1, max_size=6)
finals = st.sampled_from(["success", "failed"])


class Crash(Exception):
    """The worker dies between two statements of a transaction."""


def outcome(item_id: int, status: str) -> ItemOutcome:
    return ItemOutcome.success(item_id, n=item_id) if status == "success" else ItemOutcome.failed(item_id, "no")


def make_machine(engine: Engine):
    tenants = itertools.count(1000)

    class CountersMachine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            tenant = next(tenants)

            def create(s):
                batch_id = create_batch(s, tenant_id=tenant, task_type="account_check", task_name="machine",
                                        create_admin_id=1, task_data=None)
                claim = claim_batch(s, batch_id, owner="a", flow_run_id=None)
                add_details(s, batch_id, claim.fence, [(i, None) for i in range(1, N + 1)])
                set_total(s, batch_id, claim.fence)
                return batch_id, claim.fence

            self.batch_id, self.fence = run_transaction(engine, create)
            self.stale: list[int] = []
            self.model = {i: "pending" for i in range(1, N + 1)}
            self.running = True

        # -- the model ------------------------------------------------------------------
        def _expect(self, outs: list[ItemOutcome]) -> int:
            latest = {o.item_id: o.status for o in outs}
            moved = 0
            for item_id, status in latest.items():
                if self.model[item_id] == "pending":
                    self.model[item_id] = status
                    moved += 1
            return moved

        def _record(self, session: Session, fence: int, outs: list[ItemOutcome]) -> int:
            return record_outcomes(session, self.batch_id, fence, outs).total

        # -- rules ----------------------------------------------------------------------
        @precondition(lambda self: self.running)
        @rule(ids=items, status=finals)
        def record(self, ids, status) -> None:
            outs = [outcome(i, status) for i in ids]
            moved = run_transaction(engine, lambda s: self._record(s, self.fence, outs))
            assert moved == self._expect(outs)

        @precondition(lambda self: self.running and any(v != "pending" for v in self.model.values()))
        @rule(data=st.data(), status=finals)
        def record_again(self, data, status) -> None:
            done = sorted(i for i, v in self.model.items() if v != "pending")
            ids = data.draw(st.lists(st.sampled_from(done), min_size=1, max_size=4))
            moved = run_transaction(engine, lambda s: self._record(s, self.fence, [outcome(i, status) for i in ids]))
            assert moved == 0  # 0 items recorded twice; the first outcome stays

        @precondition(lambda self: self.running)
        @rule(ids=items, status=finals)
        def crash_between_statements(self, ids, status) -> None:
            """The detail UPDATEs ran, the counter UPDATE never did: the transaction rolls back."""
            outs = [outcome(i, status) for i in ids]
            with engine.connect() as conn:
                @event.listens_for(conn, "before_cursor_execute")
                def die(conn_, cursor, statement, *args) -> None:
                    if statement.startswith("UPDATE la_batch_task SET processed_count"):
                        raise Crash()

                with pytest.raises(Crash), Session(bind=conn) as s, s.begin():
                    self._record(s, self.fence, outs)
                    raise Crash()  # nothing moved, so no counter UPDATE: die before COMMIT anyway

        @precondition(lambda self: self.running)
        @rule(ids=items, status=finals)
        def commit_ack_lost(self, ids, status) -> None:
            """Committed, the answer lost, the transaction re-run: the re-run moves 0 rows."""
            outs = [outcome(i, status) for i in ids]
            first = run_transaction(engine, lambda s: self._record(s, self.fence, outs))
            again = run_transaction(engine, lambda s: self._record(s, self.fence, outs))
            assert (first, again) == (self._expect(outs), 0)

        @precondition(lambda self: self.running)
        @rule()
        def takeover(self) -> None:
            claim = run_transaction(engine, lambda s: claim_batch(s, self.batch_id, owner="b", flow_run_id=None,
                                                                 takeover=True))
            assert claim.fence == self.fence + 1
            self.stale.append(self.fence)
            self.fence = claim.fence

        @precondition(lambda self: bool(self.stale))
        @rule(data=st.data(), ids=items, status=finals)
        def stale_write(self, data, ids, status) -> None:
            old = data.draw(st.sampled_from(self.stale))
            with pytest.raises(StaleFence):
                run_transaction(engine, lambda s: self._record(s, old, [outcome(i, status) for i in ids]))

        @precondition(lambda self: self.running)
        @rule()
        def reap_then_resume(self) -> None:
            """The reaper fails the batch (fence +1), a resume claims it again (fence +1)."""
            assert run_transaction(engine, lambda s: mark_failed_unowned(s, self.batch_id, self.fence, "gone"))
            claim = run_transaction(engine, lambda s: claim_batch(s, self.batch_id, owner="c", flow_run_id=None))
            assert claim.fence == self.fence + 2 and claim.resumed
            self.stale += [self.fence, self.fence + 1]
            self.fence = claim.fence

        # -- invariants -----------------------------------------------------------------
        @invariant()
        def counters_match(self) -> None:
            stored = run_transaction(engine, lambda s: counters(s, self.batch_id))
            actual = run_transaction(engine, lambda s: recount(s, self.batch_id))
            assert stored.processed == stored.success + stored.failed  # I3
            assert (stored.total, stored.processed, stored.success, stored.failed) == (
                actual.total, actual.processed, actual.success, actual.failed)
            want = {s: sum(v == s for v in self.model.values()) for s in ("pending", "success", "failed")}
            assert (actual.total, actual.pending, actual.success, actual.failed) == (
                N, want["pending"], want["success"], want["failed"])

        @invariant()
        def details_and_fence_match(self) -> None:
            with engine.connect() as conn:
                rows = dict(conn.execute(text("SELECT item_id, status FROM la_batch_task_detail WHERE task_id = :b"),
                                         {"b": self.batch_id}).all())
                fence = conn.execute(text("SELECT fence FROM la_batch_run WHERE task_id = :b"),
                                     {"b": self.batch_id}).scalar_one()
            assert rows == self.model
            assert fence == self.fence

    return CountersMachine


def test_counters_and_fence_under_interleaved_faults(mysql_engine: Engine) -> None:
    """40 runs x up to 15 steps: I3 and the fence hold after every step (see the module docstring)."""
    machine = make_machine(mysql_engine)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=15, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck),
    ))
