"""Templates: validated when saved, stored as a schedule with parameters on the type's deployment."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prefect.client.orchestration import get_client

from deployments.templates import main
from tests.support.batch_env import BatchEnv


async def _deployment(name: str):
    flow_name, deployment = name.split("/")
    async with get_client() as client:
        flow_id = await client.create_flow_from_name(flow_name)
        deployment_id = await client.create_deployment(flow_id=flow_id, name=deployment)
        return deployment_id


async def _schedules(deployment_id):
    async with get_client() as client:
        return await client.read_deployment_schedules(deployment_id)


async def _flow_run_parameters(deployment_id) -> list[dict]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        return [r.parameters for r in runs]


def test_templates_are_validated_then_scheduled(batch_env: BatchEnv, tmp_path: Path, capsys) -> None:
    batch_env.seed({7: 5, 8: 5})
    deployment_id = asyncio.run(_deployment("nickname-change/nickname-change"))
    good, bad, foreign = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "foreign.json"
    good.write_text(json.dumps([{"account_id": 700001, "nickname": "Ann"}]))
    bad.write_text(json.dumps([{"account_id": 700001}]))
    foreign.write_text(json.dumps([{"account_id": 800001, "nickname": "Bob"}]))
    add = ["add", "--type", "nickname_change", "--cron", "0 3 * * *"]

    assert main([*add, "--name", "n7", "--tenant-id", "7", "--items-file", str(good)]) == 0
    for args, reason in [
        (["--name", "x", "--tenant-id", "99", "--items-file", str(good)], "template refused: unknown tenant 99"),
        (["--name", "x", "--tenant-id", "7", "--items-file", str(bad)], "template refused: "),
        (["--name", "x", "--tenant-id", "7", "--items-file", str(foreign)], "template refused: "),
        (["--name", "n7", "--tenant-id", "7", "--items-file", str(good)], "template 'n7' already exists"),
        (["--name", "x", "--tenant-id", "7", "--items-file", str(tmp_path / "none.json")], "cannot read"),
        (["--name", "x", "--tenant-id", "7", "--items-file", str(good), "--cron", "0 3 * *"],
         'invalid --cron/--timezone: Invalid cron string: "0 3 * *"'),
    ]:
        capsys.readouterr()
        assert main([*add, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and reason in err, err

    [schedule] = asyncio.run(_schedules(deployment_id))
    assert schedule.slug == "n7" and schedule.active and schedule.schedule.cron == "0 3 * * *"
    assert schedule.parameters == {"tenant_id": 7, "items": [{"account_id": 700001, "nickname": "Ann"}]}

    assert main(["run", "--name", "n7", "--type", "nickname_change"]) == 0  # on demand
    assert {"tenant_id": 7, "items": [{"account_id": 700001, "nickname": "Ann"}]} in asyncio.run(
        _flow_run_parameters(deployment_id)
    )
    assert main(["remove", "--name", "n7", "--type", "nickname_change"]) == 0
    assert asyncio.run(_schedules(deployment_id)) == []
