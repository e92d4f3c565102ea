"""The Prefect API behind authentication, and every deployment of prefect.yaml loadable and
runnable, on the session's real server (its API requires the credential: see
deployments/local_server.py).

- without the credential the API answers 401 (health and the UI page stay open, the UI asks);
- bootstrap without it, or with a wrong one: one line, exit 2, nothing written;
- every deployment registered by ``prefect deploy --all`` names an entrypoint that loads;
- ``python -m deployments.serve`` runs the item types to a completed batch in the mirror;
- the credential appears in no log, parameter, job variable, result or dump.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from prefect.client.schemas.filters import LogFilter
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_entrypoint

from deployments.spec import REPO_ROOT, load_specs
from tests.support.deployed import POOL, Deployed, wait_for
from tests.support.services import auth_needles, prefect_db_dump

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVED = ("nickname-change", "avatar-change", "add-friend")
SERVED_TENANT = 11


def _credential(prefect_server) -> tuple[str, str]:
    user, password = prefect_server.auth_string.split(":", 1)
    return user, password


@pytest.mark.parametrize("path", ["/flow_runs/filter", "/deployments/filter", "/work_pools/filter", "/logs/filter"])
def test_api_answers_401_without_the_credential(prefect_server, path: str) -> None:
    assert prefect_server.auth_string, "the session's server must run with authentication on"
    url = prefect_server.api_url + path
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, auth=("batch", "not-the-password")).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer x"}).status_code == 401
    assert httpx.post(url, json={}, auth=_credential(prefect_server)).status_code == 200


def test_starting_a_run_needs_the_credential(prefect_server) -> None:
    """What an intruder would do first: start a deployment's run. Refused before any lookup."""
    url = f"{prefect_server.api_url}/deployments/{uuid.uuid4()}/create_flow_run"
    assert httpx.post(url, json={"parameters": {"tenant_id": 7}}).status_code == 401
    assert httpx.post(url, json={}, auth=_credential(prefect_server)).status_code == 404


def test_health_is_open_and_the_ui_asks_for_the_credential(prefect_server) -> None:
    assert httpx.get(f"{prefect_server.api_url}/health").status_code == 200  # probes need no secret
    base = prefect_server.api_url.removesuffix("/api")
    page = httpx.get(f"{base}/", follow_redirects=True)
    assert page.status_code == 200 and "<!DOCTYPE html>" in page.text[:200]
    ui = httpx.get(f"{base}/ui-settings").json()
    assert ui["auth"] == "BASIC"  # the UI shows its login form; the password field takes user:password


@pytest.mark.parametrize("credential", [None, "batch:wrong"], ids=["missing", "wrong"])
def test_bootstrap_refused_is_one_line_and_writes_nothing(prefect_server, tmp_path: Path,
                                                         credential: str | None) -> None:
    mirror = tmp_path / "mirror.db"
    env = {**prefect_server.env, "BATCH_DATABASE_URL": f"sqlite:///{mirror}"}
    env.pop("PREFECT_API_AUTH_STRING")
    if credential is not None:
        env["PREFECT_API_AUTH_STRING"] = credential
    result = subprocess.run([sys.executable, "-m", "deployments.bootstrap"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "PREFECT_API_AUTH_STRING" in line and "Traceback" not in line
    assert not mirror.exists()  # checked before the migrations
    for needle in [*auth_needles(prefect_server.auth_string), "wrong"]:
        assert needle not in result.stdout + result.stderr


def test_every_deployed_entrypoint_loads(system: Deployed) -> None:
    """``prefect deploy --all`` (run by bootstrap --deploy): each deployment's entrypoint, in the
    checkout its pull step names, loads the flow the deployment belongs to."""
    specs = load_specs()
    with system.client() as client:
        deployed = {d.name: d for d in client.read_deployments() if d.work_pool_name == POOL}
        assert {s.name for s in specs} <= set(deployed)
        for spec in specs:
            deployment = deployed[spec.name]
            assert deployment.entrypoint == spec.entrypoint
            flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment.entrypoint))
            assert flow.name == client.read_flow(deployment.flow_id).name
            assert flow.fn.__name__ == deployment.entrypoint.rsplit(":", 1)[1]


def _items(system: Deployed, name: str) -> list[dict]:
    ids = [int(i) for (i,) in system.sql("SELECT id FROM la_alt_account WHERE tenant_id = :t ORDER BY id",
                                          t=SERVED_TENANT)]
    if name == "nickname-change":
        return [{"account_id": i, "nickname": f"served {i}"} for i in ids]
    if name == "avatar-change":
        return [{"account_id": i, "avatar_url": f"https://img.example.com/{i}.png"} for i in ids]
    uids = [f"u{SERVED_TENANT}-{i % 100_000:06d}" for i in ids]
    return [{"account_id": i, "friend_uid": uids[(k + 1) % len(uids)]} for k, i in enumerate(ids)]


def test_served_item_types_complete_their_batches(system: Deployed) -> None:
    """``python -m deployments.serve --no-schedules --only ...`` on the session's server (with the
    credential), runs started by ``prefect deployment run``: each batch completes in the mirror.

    Serving upserts deployments of the same names but keeps their work pool (the worker would
    race the runner for the runs), and pauses them when it stops: the pool deployments are
    deleted first and deployed again afterwards."""
    with system.client() as client:
        for name in SERVED:
            client.delete_deployment(client.read_deployment_by_name(f"{name}/{name}").id)
    log = system.tmp / "serve-items.log"
    serve = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve", "--no-schedules", "--only", ",".join(SERVED)],
        cwd=REPO_ROOT, env=system.env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        with system.client() as client:
            def served() -> bool:
                try:
                    return all(client.read_deployment_by_name(f"{n}/{n}").work_pool_name is None for n in SERVED)
                except ObjectNotFound:
                    return False

            wait_for(served, 90, interval=1, what="the served deployments")
        runs = {}
        for name in SERVED:
            params = json.dumps({"tenant_id": SERVED_TENANT, "items": _items(system, name)})
            out = system.run("prefect", "deployment", "run", f"{name}/{name}", "--params", params, timeout=60)
            assert out.returncode == 0, out.stdout + out.stderr
            runs[name] = re.search(r"UUID:\s*([0-9a-f-]{36})", out.stdout).group(1)
        with system.client() as client:
            for name, flow_run_id in runs.items():
                state = wait_for(lambda: (s := client.read_flow_run(flow_run_id).state) and s.is_final() and s,
                                 120, what=f"the served {name} run to end")
                assert state.is_completed(), (name, state, log.read_text(errors="replace")[-3000:])
        assert all(run_id in log.read_text(errors="replace") for run_id in runs.values())  # serve ran them
        task_types = {n.replace("-", "_") for n in SERVED}
        batches = [b for b in system.batches_of(SERVED_TENANT) if b["task_type"] in task_types]
        assert {b["task_type"] for b in batches} == task_types
        for batch in batches:
            assert batch["task_status"] == "completed", batch
            assert batch["total_count"] == batch["processed_count"] == len(_items(system, "avatar-change"))
            system.assert_consistent(batch["id"])
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        names = [a for n in SERVED for a in ("--name", n)]
        again = subprocess.run(  # as the bootstrap deploys: the pull step keeps {{ $BATCH_REPO_DIR }}
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", *names], cwd=REPO_ROOT,
            env={k: v for k, v in system.env.items() if k != "BATCH_REPO_DIR"}, capture_output=True, text=True,
            timeout=180,
        )
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    with system.client() as client:
        for name in SERVED:
            deployment = client.read_deployment_by_name(f"{name}/{name}")
            assert deployment.work_pool_name == POOL and not deployment.paused


def _mirror_dump(system: Deployed) -> str:
    url = system.engine.url
    return subprocess.run(
        ["mysqldump", "-h", url.host, "-P", str(url.port or 3306), "-u", url.username, "--no-create-info",
         url.database], capture_output=True, text=True, check=True,
    ).stdout


def _files_text(*roots: Path) -> str:
    parts = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                parts.append(f"== {path}\n" + path.read_text(errors="replace"))
    return "\n".join(parts)


def test_the_credential_is_in_no_log_parameter_or_dump(system: Deployed, prefect_server) -> None:
    """After the runs above (worker, CLI, dispatcher, serve): the credential, in any of its forms,
    is in no log (server, worker, serve, flow runs via the API), no deployment or flow-run
    parameter or job variable, no stored state or result, no mirror row."""
    needles = auth_needles(prefect_server.auth_string)
    assert needles
    with system.client() as client:
        deployments = client.read_deployments()
        flow_runs = client.read_flow_runs(limit=200)
        logs = []
        while len(logs) < 50_000 and (page := client.read_logs(LogFilter(), limit=200, offset=len(logs))):
            logs += page
    assert deployments and flow_runs and len(logs) > 20  # there is something to search
    sources = {
        "deployments": json.dumps([[d.parameters, d.job_variables, d.pull_steps] for d in deployments], default=str),
        "flow runs": json.dumps([[r.parameters, r.job_variables, r.state and r.state.message] for r in flow_runs],
                                default=str),
        "flow run logs": "\n".join(entry.message for entry in logs),
        "worker and serve logs": _files_text(system.tmp),
        "prefect home (server log, results)": _files_text(prefect_server.home),
        "prefect database": prefect_db_dump(prefect_server),
        "mirror": _mirror_dump(system),
    }
    found = {name: sum(text.count(n) for n in needles) for name, text in sources.items()}
    assert not any(found.values()), found
    assert "worker-1.log" in sources["worker and serve logs"]  # the worker's log was read
    assert "prefect.flow_runs.worker" in sources["worker and serve logs"]
