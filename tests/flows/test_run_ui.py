"""What a batch shows in the Prefect UI, read back from the real server's API: tags, failed item
task runs, chunk messages, artifacts, and who cancelled."""

from __future__ import annotations

import asyncio
import json
import logging
import re

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.account_check import account_check
from flows.batch_runner import CANCELLED_BY_PANEL
from tests.support.batch_env import BatchEnv


def run(coro):
    return asyncio.run(coro)


async def _seen_by_ui(flow_run_id, batch_id: int):
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        for _ in range(100):  # the server records task-run states from events, a moment later
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if all(t.state and t.state.is_final() for t in task_runs):
                break
            await asyncio.sleep(0.2)
        keys = [f"batch-{batch_id}-{what}" for what in ("progress", "failures", "summary")]
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(  # test databases reuse batch ids
            key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        ))
    assert len({a.key for a in artifacts}) == len(artifacts), "one artifact per key and run"
    return flow_run, task_runs, {a.key: a for a in artifacts}


def _failing(env: BatchEnv, tenant_id: int, numbers: list[int]) -> set[int]:
    env.sim.configure(fail_uids=[f"u{tenant_id}-{n:06d}" for n in numbers])
    return {tenant_id * 100_000 + n for n in numbers}


def test_failed_items_are_failed_task_runs_and_artifacts_list_them(batch_env: BatchEnv, caplog) -> None:
    batch_env.seed({7: 12}, seed=2)
    failing = _failing(batch_env, 7, [3, 5, 11])

    with caplog.at_level(logging.DEBUG, logger="tasks.run_ui"):
        state = run(account_check(tenant_id=7, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    flow_run, task_runs, artifacts = run(_seen_by_ui(state.state_details.flow_run_id, batch_id))
    assert {"batch", "account_check", "tenant-7"} <= set(flow_run.tags)

    items = {int(t.name.rsplit("-", 1)[1]): t.state for t in task_runs if t.name.startswith("account_check-")}
    assert len(items) == 12
    assert {i for i, s in items.items() if s.is_failed()} == failing
    for item_id in failing:
        assert items[item_id].message.startswith(f"item {item_id} failed: "), items[item_id].message
    assert all(s.is_completed() for i, s in items.items() if i not in failing)

    progress = artifacts[f"batch-{batch_id}-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "12/12 processed, 9 succeeded, 3 failed" in progress.description
    table = json.loads(artifacts[f"batch-{batch_id}-failures"].data)
    assert sorted(row["account_id"] for row in table) == sorted(failing)
    assert all(row["reason"] for row in table)
    summary = artifacts[f"batch-{batch_id}-summary"].data
    assert f"## Batch {batch_id}: completed" in summary and "| 12 | 12 | 9 | 3 | 0 |" in summary
    # Artifact calls are per batch and per 2 s, not per item: open + a few refreshes + 2 at the end.
    (cost,) = [r.getMessage() for r in caplog.records if "artifact calls" in r.getMessage()]
    calls, ms_each = re.match(r"batch \d+: (\d+) artifact calls, ([\d.]+) ms each", cost).groups()
    print(cost)
    assert int(calls) <= 6 and float(ms_each) < 500


def test_chunk_task_runs_name_their_failed_items(batch_env: BatchEnv, configure) -> None:
    configure(chunk_threshold=5, chunk_size=5)
    batch_env.seed({8: 12}, seed=2)
    _failing(batch_env, 8, [2, 12])

    state = run(account_check(tenant_id=8, return_state=True))

    assert state.is_completed(), state.message
    (batch_id,) = [r.id for r in batch_env.sql("SELECT id FROM la_batch_task")]
    _, task_runs, artifacts = run(_seen_by_ui(state.state_details.flow_run_id, batch_id))
    chunks = {t.name: (t.state.type.value, t.state.message) for t in task_runs if "-items-" in t.name}
    assert chunks == {
        "account_check-items-800001-800005": ("FAILED", "5 items: 4 succeeded, 1 failed"),
        "account_check-items-800006-800010": ("COMPLETED", "5 items: 5 succeeded, 0 failed"),
        "account_check-items-800011-800012": ("FAILED", "2 items: 1 succeeded, 1 failed"),
    }
    assert sorted(r["account_id"] for r in json.loads(artifacts[f"batch-{batch_id}-failures"].data)) == [800002, 800012]


def test_a_cancel_by_the_panel_is_logged_as_such(batch_env: BatchEnv) -> None:
    batch_env.seed({9: 200}, seed=2)
    batch_env.sim.configure(latency_ms=50)

    batch_id, state = batch_env.cancel_from_panel(account_check(tenant_id=9, return_state=True), after=10)

    assert state.is_cancelled(), state.message

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the run's logs reach the server

    async def logs():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
            )

    messages = [entry.message for entry in run(logs())]
    assert f"batch {batch_id} {CANCELLED_BY_PANEL}" in messages
    _, _, artifacts = run(_seen_by_ui(state.state_details.flow_run_id, batch_id))
    summary = artifacts[f"batch-{batch_id}-summary"].data
    assert f"## Batch {batch_id}: cancelled" in summary and f"--resume {batch_id}" in summary
