"""Dispatcher, reaper and prune flows in this process, against the session's Prefect server
and a real MariaDB (no worker: dispatched flow runs stay scheduled, which is what is checked).
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Crashed, Running

from batchcore.outcomes import ItemOutcome
from db import (
    add_details,
    claim_batch,
    create_batch,
    finish_batch,
    record_outcomes,
    run_transaction,
)
from flows.dispatcher import DEPLOYMENTS, dispatch_once
from flows.prune import prune
from flows.reaper import reap_once, reaper
from tasks.hooks import close_owned_batches
from tasks.maintenance import PendingRow, row_problem

# -- pure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "task_data", "problem"),
    [
        ("account_check", '{"account_ids":[1,2]}', None),
        ("account_check", None, None),
        ("account_check", "", None),
        ("account_check", "null", None),
        ("teleport", "{}", "unknown task_type 'teleport'"),
        ("account_check", "{account_ids: [1", "not valid JSON"),
        ("account_check", "[1,2]", "must be a JSON object, got list"),
        ("account_check", '"text"', "must be a JSON object, got string"),
        ("account_check", '{"acount_ids": [1]}', "unknown key(s) 'acount_ids' in task_data"),
        ("account_check", "[" * 30_000 + "]" * 30_000, "nested more than 16 levels deep"),
        ("account_check", '{"account_ids": [NaN]}', "NaN is not a number"),
        ("nickname_change", '{"items": {"account_id": 1}}', "task_data items must be a list, got object"),
        ("account_check", '{"account_ids": [' + "1," * 40_000 + "1]}", "bytes (at most 65535)"),
    ],
)
def test_row_problem(task_type: str, task_data: str | None, problem: str | None) -> None:
    found = row_problem(PendingRow(1, 7, task_type, task_data, 0), DEPLOYMENTS)
    assert (found is None) if problem is None else (problem in found)


def test_every_batch_type_has_a_deployment() -> None:
    from batchlib.batch_types import batch_type_names

    assert set(batch_type_names()) <= set(DEPLOYMENTS), "add the type's line to DEPLOYMENTS in flows/dispatcher.py"


# -- dispatcher ------------------------------------------------------------------------


@flow(name="dispatch-pass")
def _dispatch_pass(deployments: dict[str, str], redispatch_after_s: int = 120) -> dict:
    return dict(dispatch_once(redispatch_after_s=redispatch_after_s, deployments=deployments))


def _runs_of(batch_id: int, deployments: dict[str, str]) -> list:
    """Flow runs the dispatcher created for a batch (batch ids repeat across test databases)."""
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployments["account_check"])
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"batch-{batch_id}"])))
    return [r for r in runs if r.deployment_id == deployment.id]


def _note(batch_env, batch_id: int):
    return batch_env.sql("SELECT owner, flow_run_id, fence FROM la_batch_run WHERE task_id = :id", id=batch_id)[0]


def test_overlapping_dispatchers_start_one_run_per_row(batch_env, unit_deployment) -> None:
    batch_env.seed({7: 3})
    batch_id = batch_env.insert_pending(7, "account_check", {})
    results: list[dict] = []
    # Threads do not inherit the Prefect settings context (the API URL): hand it over.
    passes = [
        threading.Thread(target=contextvars.copy_context().run,
                         args=(lambda: results.append(_dispatch_pass(unit_deployment)),))
        for _ in range(3)
    ]
    for t in passes:
        t.start()
    for t in passes:
        t.join()
    runs = _runs_of(batch_id, unit_deployment)
    assert len(runs) == 1, results
    assert runs[0].parameters == {"batch_id": batch_id, "tenant_id": 7}
    note = _note(batch_env, batch_id)
    assert note.owner == "dispatcher:1" and note.flow_run_id == str(runs[0].id) and note.fence == 0
    # Later passes wait for that run to claim the row.
    assert _dispatch_pass(unit_deployment) == {"waiting": 1}
    assert len(_runs_of(batch_id, unit_deployment)) == 1


def test_a_run_that_ended_without_claiming_is_replaced_once(batch_env, unit_deployment) -> None:
    batch_env.seed({7: 3})
    batch_id = batch_env.insert_pending(7, "account_check", None)
    _dispatch_pass(unit_deployment)
    (first,) = _runs_of(batch_id, unit_deployment)
    assert _dispatch_pass(unit_deployment, redispatch_after_s=0) == {"waiting": 1}  # still scheduled
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first.id, Crashed(message="worker lost"), force=True)
    assert _dispatch_pass(unit_deployment, redispatch_after_s=3600) == {"waiting": 1}  # too soon
    assert _dispatch_pass(unit_deployment, redispatch_after_s=0) == {"restarted": 1}
    runs = _runs_of(batch_id, unit_deployment)
    assert len(runs) == 2
    assert _note(batch_env, batch_id).owner == "dispatcher:2"
    # Once the (second) run claims the row, the dispatcher leaves it alone for good.
    engine = batch_env.engine
    run_transaction(engine, lambda s: claim_batch(s, batch_id, owner="vm:1", flow_run_id=str(runs[0].id)))
    assert _dispatch_pass(unit_deployment, redispatch_after_s=0) == {}
    assert _note(batch_env, batch_id).fence == 1


def test_unstartable_rows_fail_with_a_readable_message(batch_env, unit_deployment) -> None:
    bad_type = batch_env.insert_pending(7, "teleport", {})
    bad_json = batch_env.insert_pending(8, "account_check", "{oops")
    assert _dispatch_pass(unit_deployment) == {"failed": 2}
    for batch_id, words in ((bad_type, "unknown task_type"), (bad_json, "not valid JSON")):
        row = batch_env.batch(batch_id)
        assert row["task_status"] == "failed" and words in row["error_message"] and row["end_time"]
        assert not _runs_of(batch_id, unit_deployment)


def test_rows_queue_per_tenant_and_type(batch_env, unit_deployment) -> None:
    """A row waits while its (tenant, type) runs and behind older rows of that key; other keys go on."""
    batch_env.seed({7: 3, 8: 3})
    running = run_transaction(batch_env.engine, lambda s: claim_batch(
        s, create_batch(s, tenant_id=7, task_type="account_check", task_name="t", create_admin_id=0, task_data=None),
        owner="vm:1", flow_run_id=None,
    ))
    first, second = (batch_env.insert_pending(7, "account_check", {}) for _ in range(2))
    other = batch_env.insert_pending(8, "account_check", {})
    assert _dispatch_pass(unit_deployment) == {"queued": 2, "started": 1}
    assert len(_runs_of(other, unit_deployment)) == 1 and not _runs_of(first, unit_deployment)
    run_transaction(batch_env.engine, lambda s: finish_batch(s, running.batch_id, running.fence, "completed"))
    assert _dispatch_pass(unit_deployment) == {"queued": 1, "started": 1, "waiting": 1}
    assert len(_runs_of(first, unit_deployment)) == 1 and not _runs_of(second, unit_deployment)


def test_a_poison_row_fails_alone_and_the_pass_goes_on(batch_env, unit_deployment) -> None:
    """A row nested 30,000 levels deep (60 KB: fits the TEXT column), one with a misspelt key,
    then a good row inserted after them: the bad ones fail with a one-line reason, the good one
    is dispatched in the same pass."""
    batch_env.seed({7: 3, 8: 3, 9: 3})
    deep = batch_env.insert_pending(7, "account_check", "[" * 30_000 + "]" * 30_000)
    misspelt = batch_env.insert_pending(8, "account_check", {"acount_ids": [800001]})
    good = batch_env.insert_pending(9, "account_check", {"account_ids": [900001]})

    assert _dispatch_pass(unit_deployment) == {"failed": 2, "started": 1}

    for batch_id, words in ((deep, "nested more than 16 levels deep"), (misspelt, "unknown key(s) 'acount_ids'")):
        row = batch_env.batch(batch_id)
        assert row["task_status"] == "failed" and words in row["error_message"], row["error_message"]
        assert "\n" not in row["error_message"] and not _runs_of(batch_id, unit_deployment)
    (run,) = _runs_of(good, unit_deployment)
    assert run.parameters == {"batch_id": good, "tenant_id": 9}


# -- reaper ----------------------------------------------------------------------------


def _running_batch(
    batch_env, tenant_id: int, flow_run_id: str | None, silent_s: int, task_type: str = "account_check", fill=None
) -> int:
    """A batch claimed by ``flow_run_id`` and silent for ``silent_s``; ``fill(session, batch_id, fence)``
    adds its details."""

    def open_(s):
        batch_id = create_batch(
            s, tenant_id=tenant_id, task_type=task_type, task_name="t", create_admin_id=0, task_data=None
        )
        fence = claim_batch(s, batch_id, owner="vm:1", flow_run_id=flow_run_id).fence
        if fill is not None:
            fill(s, batch_id, fence)
        return batch_id

    batch_id = run_transaction(batch_env.engine, open_)
    seen = int(time.time()) - silent_s
    batch_env.sql("UPDATE la_batch_run SET heartbeat_time = :t WHERE task_id = :id", t=seen, id=batch_id)
    batch_env.sql("UPDATE la_batch_task SET update_time = :t WHERE id = :id", t=seen, id=batch_id)
    return batch_id


@flow(name="reaper-test-run")
def _placeholder() -> None:
    pass


def _flow_run(state) -> str:
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(_placeholder, state=state)
        return str(run.id)


def test_reaper_fails_gone_and_silent_runs_and_spares_live_ones(batch_env) -> None:
    crashed_quiet = _running_batch(batch_env, 1, _flow_run(Crashed(message="SIGKILL")), silent_s=30)
    crashed_but_beating = _running_batch(batch_env, 2, _flow_run(Crashed()), silent_s=1)
    missing_quiet = _running_batch(batch_env, 3, str(uuid.uuid4()), silent_s=30)
    running_quiet = _running_batch(batch_env, 4, _flow_run(Running()), silent_s=30)
    running_silent = _running_batch(batch_env, 5, _flow_run(Running()), silent_s=500)
    healthy = _running_batch(batch_env, 6, _flow_run(Running()), silent_s=0)

    result = reaper(auto_resume_max=0)

    assert sorted(result["gone"]) == sorted([crashed_quiet, missing_quiet])
    assert result["stale"] == [running_silent]
    status = {i: batch_env.batch(i)["task_status"] for i in
              (crashed_quiet, crashed_but_beating, missing_quiet, running_quiet, running_silent, healthy)}
    assert status == {
        crashed_quiet: "failed", crashed_but_beating: "running", missing_quiet: "failed",
        running_quiet: "running", running_silent: "failed", healthy: "running",
    }
    assert "Crashed" in batch_env.batch(crashed_quiet)["error_message"]
    assert "does not exist" in batch_env.batch(missing_quiet)["error_message"]
    assert "no heartbeat" in batch_env.batch(running_silent)["error_message"]
    assert f"batch_id={crashed_quiet}" in batch_env.batch(crashed_quiet)["error_message"]
    for batch_id in (crashed_quiet, missing_quiet, running_silent):
        batch_env.assert_consistent(batch_id)
        assert _note(batch_env, batch_id).fence == 2  # the dead owner is fenced out
    assert reaper(auto_resume_max=0) == {"gone": [], "stale": [], "resumed": []}


@flow(name="reap-pass")
def _reap_pass(deployments: dict[str, str], auto_resume_max: int) -> dict:
    return reap_once(auto_resume_max=auto_resume_max, deployments=deployments)


def test_a_dead_run_is_resumed_once_per_attempt_by_overlapping_maintenance(batch_env, unit_deployment) -> None:
    dead = _running_batch(batch_env, 8, _flow_run(Crashed(message="SIGKILL")), silent_s=30)
    first = _reap_pass(unit_deployment, 2)
    assert (first["gone"], first["resumed"]) == ([dead], [dead])
    assert _reap_pass(unit_deployment, 2)["resumed"] == []  # an overlapping pass starts nothing more
    (run,) = _runs_of(dead, unit_deployment)
    assert {"auto-resume", "auto-resume-1", "tenant-8", f"batch-{dead}"} <= set(run.tags)
    assert run.parameters == {"batch_id": dead, "tenant_id": 8}
    row = batch_env.batch(dead)
    assert row["task_status"] == "failed" and row["error_message"].startswith("auto-resume 1/2 after: flow run ")
    assert "resume: prefect" not in row["error_message"]
    assert _note(batch_env, dead).owner == "auto-resume:1" and _note(batch_env, dead).flow_run_id == str(run.id)

    # The resume run never claims the batch (nobody polls its pool): once it ended, attempt 2, then none.
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Crashed(message="its worker died too"), force=True)
    batch_env.sql("UPDATE la_batch_run SET update_time = update_time - 120 WHERE task_id = :id", id=dead)
    assert _reap_pass(unit_deployment, 2)["resumed"] == [dead]
    assert batch_env.batch(dead)["error_message"].startswith("auto-resume 2/2 after: auto-resume run ")
    second = [r for r in _runs_of(dead, unit_deployment) if r.id != run.id]
    assert len(second) == 1 and "auto-resume-2" in second[0].tags
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(second[0].id, Crashed(), force=True)
    batch_env.sql("UPDATE la_batch_run SET update_time = update_time - 120 WHERE task_id = :id", id=dead)
    assert _reap_pass(unit_deployment, 2)["resumed"] == []
    assert _reap_pass(unit_deployment, 2)["resumed"] == []
    row = batch_env.batch(dead)
    assert row["task_status"] == "failed" and row["error_message"].startswith("no automatic resume left (2/2 used)")
    assert len(_runs_of(dead, unit_deployment)) == 2


def _pin_sync_with_a_failed_pin(batch_env, tenant_id: int, flow_run_id: str, silent_s: int) -> int:
    """A running pin_sync batch: one pin failed, one succeeded, one still pending."""

    def fill(s, batch_id: int, fence: int) -> None:
        add_details(s, batch_id, fence, [(1, {"cid": "bafyone"}), (2, {"cid": "bafytwo"}), (3, {"cid": "bafy3"})])
        outcomes = [ItemOutcome.failed(1, "not pinned: bafyone", cid="bafyone"), ItemOutcome.success(2, cid="bafytwo")]
        record_outcomes(s, batch_id, fence, outcomes, int(time.time()))

    return _running_batch(batch_env, tenant_id, flow_run_id, silent_s, task_type="pin_sync", fill=fill)


@pytest.mark.parametrize("ending", ["reaper: run gone", "reaper: no heartbeat", "hook: run crashed"])
def test_a_batch_failed_outside_its_run_gets_its_type_summary(batch_env, ending: str) -> None:
    """pin_sync's first failed pins reach error_message on every path that fails a batch."""
    state, silent_s = {"reaper: run gone": (Crashed(), 30), "reaper: no heartbeat": (Running(), 500),
                       "hook: run crashed": (Running(), 0)}[ending]
    flow_run_id = _flow_run(state)
    batch_id = _pin_sync_with_a_failed_pin(batch_env, 7, flow_run_id, silent_s)

    if ending.startswith("reaper"):
        result = reaper(auto_resume_max=0)
        assert batch_id in result["gone"] + result["stale"]
    else:
        assert close_owned_batches(flow_run_id, "failed", "flow run crashed: boom") == [batch_id]

    row = batch_env.batch(batch_id)
    assert row["task_status"] == "failed"
    assert row["error_message"].endswith("; 1 pin(s) failed; first 1: bafyone: not pinned: bafyone")
    assert (row["processed_count"], row["success_count"], row["failed_count"]) == (2, 1, 1)
    batch_env.assert_consistent(batch_id)


def test_hooks_close_a_batch_the_panel_cancelled_as_cancelled(batch_env) -> None:
    """A crashed run's hook asks for 'failed'; the panel's cancel has the last word."""
    flow_run_id = _flow_run(Running())
    batch_id = _running_batch(batch_env, 7, flow_run_id, silent_s=0,
                              fill=lambda s, b, f: add_details(s, b, f, [(1, None), (2, None)]))
    batch_env.sql("UPDATE la_batch_task SET task_status='cancelled' WHERE id=:id", id=batch_id)
    assert close_owned_batches(flow_run_id, "failed", "flow run crashed: boom") == [batch_id]
    row = batch_env.batch(batch_id)
    assert row["task_status"] == "cancelled" and row["end_time"]
    assert row["error_message"] == (
        "cancelled: 2 of 2 items not processed (their detail rows stay pending); flow run crashed: boom"
    )
    batch_env.assert_consistent(batch_id)


# -- prune -----------------------------------------------------------------------------


def test_prune_soft_deletes_in_chunks_until_done(batch_env) -> None:
    old = int(time.time()) - 40 * 86_400
    ids = []
    for tenant in range(40, 45):
        batch_env.sql(
            "INSERT INTO la_batch_task (tenant_id, task_name, task_type, task_status, create_admin_id, end_time,"
            " create_time, update_time) VALUES (:t, 'old', 'account_check', 'completed', 1, :o, :o, :o)",
            t=tenant, o=old,
        )
        ids.append(batch_env.sql("SELECT MAX(id) FROM la_batch_task")[0][0])
    assert prune(older_than_days=30, hard_delete=False, chunk=2) == 5
    assert all(batch_env.batch(i)["delete_time"] for i in ids)
    assert prune(older_than_days=30, hard_delete=False, chunk=2) == 0
    assert prune(older_than_days=30, hard_delete=True, chunk=2) == 5
    assert not batch_env.sql("SELECT id FROM la_batch_task WHERE tenant_id BETWEEN 40 AND 44")
