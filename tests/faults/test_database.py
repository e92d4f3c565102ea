"""Database faults that leave the server up: killed idle connections, a connection killed inside
a transaction, a commit whose acknowledgement is lost. (Server stops: test_outages.py.)

Two tenants x 1,000 accounts run side by side; every test checks I1-I3, I5, 1 platform call
per item (no fault here touches the platform: "0 items called twice") and I7.
"""

from __future__ import annotations

import asyncio
import threading

import pymysql
import pytest
from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc

import db
import db.retry
from batchlib import mirror_writer
from flows.account_check import account_check
from tests.support.faults import FaultEnv, Repeater, kill_connections, run
from tests.support.services import mysql_admin

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TENANTS = {7: 1000, 8: 1000}


async def both_tenants():
    return await asyncio.gather(*(account_check(tenant_id=t, return_state=True) for t in TENANTS))


@pytest.mark.parametrize("item_processes", [0, 2], ids=["in-the-run", "in-item-processes"])
def test_idle_connections_killed_every_second(fault_env: FaultEnv, configure, leak_check, item_processes) -> None:
    """Another session KILLs every idle connection of the test database each second: >= 2 rounds
    with kills, both batches complete, counters == recount, 0 items called twice, 0 tokens leaked;
    also with the items handled by helper processes (each with its own connections)."""
    configure(concurrency=10, item_processes=item_processes, item_processes_min_items=0)
    fault_env.sim.configure(latency_ms=10)
    fault_env.seed_canaries(TENANTS)
    admin = mysql_admin()
    try:
        with Repeater(lambda: kill_connections(admin, fault_env.db_name, idle_only=True), 1.0) as killer:
            states = run(both_tenants())
    finally:
        admin.close()

    assert killer.rounds >= 2 and killer.total >= 2, (killer.rounds, killer.total)
    fault_env.assert_all_complete(states)
    leak_check(fault_env)


def test_connection_killed_inside_a_transaction(fault_env: FaultEnv, leak_check, monkeypatch) -> None:
    """The first 6 flushes have their connection KILLed right after the guarded detail UPDATE
    (before the counter UPDATE and COMMIT): 6 kills, each transaction retried whole, counters ==
    recount (the killed half was rolled back), 0 items called twice."""
    fault_env.seed_canaries(TENANTS)
    admin = mysql_admin()
    kills = {"left": 6, "done": 0}
    lock = threading.Lock()

    database = fault_env.engine.url.database

    # Listen on every Engine (filtered to this test's database), not on one engine object:
    # whichever engine instance the runner gets for this URL, its flushes are seen.
    @event.listens_for(Engine, "after_cursor_execute")
    def kill_mid_transaction(conn, cursor, statement, params, context, executemany):
        if conn.engine.url.database != database or not statement.startswith("UPDATE la_batch_task_detail SET status"):
            return
        with lock:
            if kills["left"] <= 0:
                return
            kills["left"] -= 1
        thread_id = conn.connection.dbapi_connection.thread_id()
        with admin.cursor() as cur:
            cur.execute(f"KILL {int(thread_id)}")
        with lock:  # the two tenants' flushes run in two threads
            kills["done"] += 1

    try:
        states = run(both_tenants())
    finally:
        event.remove(Engine, "after_cursor_execute", kill_mid_transaction)
        admin.close()

    assert kills["done"] == 6
    fault_env.assert_all_complete(states)
    leak_check(fault_env)


def test_commit_acknowledgement_lost(fault_env: FaultEnv, leak_check, monkeypatch, all_logs) -> None:
    """After 5 record_outcomes transactions commit, a 2013 'lost connection' is raised in place of
    the acknowledgement (db.retry.after_commit seam): 5 committed transactions are re-run,
    0 items recorded twice (processed == 1,000 == recount per batch), 0 items called twice."""
    fault_env.seed_canaries(TENANTS)
    real_record = db.record_outcomes
    lost = {"left": 5, "done": 0}
    lock = threading.Lock()

    def record(session, *args, **kwargs):
        session.info["records"] = True
        return real_record(session, *args, **kwargs)

    def lose_ack(session) -> None:
        if not session.info.pop("records", False):
            return
        with lock:
            if lost["left"] <= 0:
                return
            lost["left"] -= 1
            lost["done"] += 1
        raise sa_exc.OperationalError(
            "COMMIT", {}, pymysql.err.OperationalError(2013, "Lost connection to server during query")
        )

    monkeypatch.setattr(mirror_writer, "record_outcomes", record)  # the name the mirror writer calls
    monkeypatch.setattr(db.retry, "after_commit", lose_ack)

    states = run(both_tenants())

    assert lost["done"] == 5
    assert all_logs.count("OperationalError 2013") >= 5  # run_transaction saw and retried each
    fault_env.assert_all_complete(states)
    leak_check(fault_env)
