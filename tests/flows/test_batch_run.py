"""BatchRun's own logic without MariaDB, Redis or a Prefect server: stopping, handling one
item, chunks, the request's first checks, and the outage policy (SQLite for the mirror)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from batchcore.errors import BatchError, DatabaseUnavailable, InvalidItems, PlatformRejected
from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.batch_types import BatchScope, get_batch_type
from batchlib.item_context import ItemContext
from batchlib.limiter import ResizableLimiter
from batchlib.mirror_writer import TAKEN_OVER, MirrorWriter
from batchlib.outage import OutagePolicy
from db import database_url, upgrade
from db.statuses import CANCELLED
from flows.batch_runner import CANCELLED_BY_PANEL, BatchRequest, BatchRun
from tasks.batch_steps import OpenedBatch

pytestmark = pytest.mark.unit


class Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    """A migrated SQLite mirror, one for the module."""
    settings = Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('mirror') / 'mirror.db'}")
    upgrade(database_url(settings))
    return settings


@pytest.fixture
def make_run(settings: Settings):

    def make(handle=None, request: BatchRequest | None = None) -> tuple[BatchRun, Log]:
        log = Log()
        logger = logging.getLogger(f"test-batch-run-{id(log)}")
        logger.addHandler(log)
        logger.setLevel(logging.INFO)
        run = BatchRun("nickname_change", request or BatchRequest(tenant_id=7), settings, logger)
        if handle is not None:
            run.batch_type = dataclasses.replace(run.batch_type, handle=handle)
        run.opened = OpenedBatch(batch_id=42, fence=1, total=3, pending=3, resumed=False)
        run.mirror = MirrorWriter(run.engine, BatchScope(42, 7), 1, on_stop=run._mirror_stop)
        run.ctx = ItemContext(7, 42, "nickname_change", settings, run.engine)
        return run, log

    return make


def test_the_first_stop_reason_wins_and_wakes_waiters_on_the_limit(make_run) -> None:
    run, log = make_run()

    async def scenario() -> bool:
        run.limit = ResizableLimiter(1)
        await run.limit.acquire()
        waiter = asyncio.create_task(run.limit.acquire())  # no slot free: waits
        await asyncio.sleep(0)
        run.stop(CANCELLED, CANCELLED_BY_PANEL)
        run.stop("lease lost")
        await asyncio.wait_for(waiter, 1)
        return waiter.done()

    assert asyncio.run(scenario())
    assert run.stopped and run.stop_reason == CANCELLED
    assert log.lines == [f"batch 42 {CANCELLED_BY_PANEL}"]


def test_the_mirror_writer_stops_the_run_through_the_same_door(make_run) -> None:
    run, log = make_run()
    run._mirror_stop(TAKEN_OVER)
    run._mirror_stop(CANCELLED)
    assert run.stop_reason == TAKEN_OVER and log.lines == []  # a takeover is not a cancel: nothing to say


def test_an_item_becomes_one_buffered_outcome_whatever_its_handler_does(make_run) -> None:
    async def handle(ctx, item_id, item_data):
        if item_id == 2:
            raise PlatformRejected("account_banned (HTTP 403)")
        if item_id == 3:
            raise KeyError("a handler bug")
        return ItemOutcome.success(item_id, nickname=item_data["nickname"])

    run, _ = make_run(handle)
    outcomes = [asyncio.run(run.process(i, {"nickname": f"n{i}"})) for i in (1, 2, 3)]

    assert [o.status for o in outcomes] == ["success", "failed", "failed"]
    assert outcomes[1].error == "account_banned (HTTP 403)"
    assert outcomes[2].error == "internal error: KeyError"
    assert run.calls == 3 and run.mirror.pending == 3


def test_a_stopped_run_hands_no_item_to_its_handler(make_run) -> None:
    called = []

    async def handle(ctx, item_id, item_data):
        called.append(item_id)
        return ItemOutcome.success(item_id)

    run, _ = make_run(handle)
    run.stop("internal error")
    assert asyncio.run(run.process(1, None)) is None
    assert called == [] and run.mirror.pending == 0


def test_a_chunk_is_taken_once(make_run) -> None:
    run, _ = make_run()
    part = [(5, {"nickname": "a"}), (6, None), (9, {"nickname": "b"})]
    assert run.stage_chunk(part) == (5, 9)
    assert run.take_chunk(5) == part
    assert run.take_chunk(5) == []


def test_an_items_file_and_a_batch_id_together_are_refused(make_run, tmp_path) -> None:
    run, _ = make_run(request=BatchRequest(batch_id=3, items_file=str(tmp_path / "items.json")))
    with pytest.raises(InvalidItems, match="one of them"):
        run.describe()


def test_a_request_without_tenant_or_batch_is_refused(make_run) -> None:
    run, _ = make_run(request=BatchRequest(task_data={"items": [{"account_id": 1, "nickname": "x"}]}))
    with pytest.raises(BatchError, match="give a tenant id"):
        run.describe()


def test_the_run_is_named_by_its_declared_type(make_run) -> None:
    run, _ = make_run()
    assert run.batch_type.name == get_batch_type("nickname_change").name


def _locked() -> OperationalError:
    return OperationalError("UPDATE ...", {}, sqlite3.OperationalError("database is locked"))


def test_the_outage_policy_retries_until_its_budget_then_gives_up() -> None:
    tries = []

    def failing():
        tries.append(1)
        raise _locked()

    policy = OutagePolicy(0.05)
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(policy.wait_out(42, "reading pending items", failing))
    assert len(tries) >= 2
    assert not policy.exhausted(None) and policy.exhausted(0.0, now=0.05) and not policy.exhausted(0.0, now=0.04)


def test_the_outage_policy_returns_at_once_when_the_database_answers_again() -> None:
    answers = iter([_locked(), "page"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert asyncio.run(OutagePolicy(5).wait_out(42, "reading", flaky)) == "page"


def test_errors_that_no_retry_can_fix_pass_through_the_outage_policy() -> None:
    def broken():
        raise OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: la_batch_task"))

    with pytest.raises(OperationalError):
        asyncio.run(OutagePolicy(5).wait_out(42, "reading", broken))
