"""The Prefect UI in a real browser: an operator finds a saved template among the deployment's
schedules, starts an account check from the Run form (tenant_id its one required field, the
form's run name kept by the run) and finds its progress and its failed accounts on the flow
run's Artifacts tab.

Headless Debian Chromium (``/usr/bin/chromium``) driven by playwright's Python package, against
the session's real ``prefect server start`` and ``python -m deployments.serve`` serving the
account-check deployment, with MariaDB, Redis and the platform simulator (3 accounts fail).
Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchlib.seeding import import_accounts
from db import make_engine, upgrade
from deployments.local_server import PrefectServer
from deployments.spec import REPO_ROOT
from simulators.account_platform import PlatformSimulator
from tests.support.services import REDIS_URL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
TENANT, ACCOUNTS, FAILING = 7, 30, (4, 9, 17)


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def served(mysql_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[dict]:
    """account-check served (``deployments.serve``) against MariaDB and a simulator where some accounts fail.

    On a Prefect server of its own: the session's server holds the same deployment names, deployed
    by other tests with a work pool and pull steps, and serving over them mixes the two."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium; .ci/run installs it)")
    upgrade(mysql_url)
    with PrefectServer() as prefect_server, PlatformSimulator(latency_ms=20) as sim:
        sim.seed({TENANT: ACCOUNTS}, seed=4)
        sim.configure(fail_uids=[f"u{TENANT}-{n:06d}" for n in FAILING])
        engine = make_engine(mysql_url)
        import_accounts(engine, sim.accounts(TENANT))
        env = {
            **prefect_server.env,
            "BATCH_DATABASE_URL": mysql_url, "BATCH_REDIS_URL": REDIS_URL, "BATCH_REDIS_KEY_PREFIX": redis_prefix,
            "BATCH_PLATFORM_URL": sim.url, "BATCH_HTTP_BACKOFF_BASE_S": "0.01", "BATCH_HTTP_BACKOFF_MAX_S": "0.05",
        }
        deployment = f"account-check/account-check-{uuid.uuid4().hex[:6]}"
        log = open(tmp_path / "serve.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.serve", "--no-schedules", "--only", "account-check"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            yield {"env": env, "engine": engine, "proc": proc, "log": tmp_path / "serve.log",
                   "server": prefect_server, "deployment": deployment}
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            engine.dispose()


def _deployment_id(server) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=server.api_url, auth_string=server.auth_string) as client:
        try:
            return str(client.read_deployment_by_name("account-check/account-check").id)
        except Exception:
            return ""


def _log_in_if_asked(page, server, url: str) -> None:
    """Prefect's UI shows a login form (one ``user:password`` field) when the server has basic auth
    (PREFECT_SERVER_API_AUTH_STRING); the UI keeps the credential, so ``url`` is opened again."""
    from playwright.sync_api import expect

    login = page.get_by_role("button", name="Login", exact=True)
    expect(login.or_(page.get_by_role("button", name="Run", exact=True))).to_be_visible()
    if login.is_visible():
        page.get_by_placeholder("admin:pass").fill(server.auth_string or "")
        login.click()
        page.wait_for_load_state("networkidle")
        page.goto(url)


def test_operator_runs_a_batch_and_sees_progress_and_failures(served, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    server = served["server"]
    ui = server.api_url.removesuffix("/api")
    deployment_id = _wait(lambda: _deployment_id(server), 60, "the served deployment")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.set_default_navigation_timeout(90_000)  # a fresh server serves its UI slowly on a busy machine
        try:
            saved = subprocess.run(
                [sys.executable, "-m", "deployments.templates", "add", "--name", "check-7-nightly",
                 "--type", "account_check", "--tenant-id", str(TENANT), "--cron", "0 3 * * *"],
                cwd=REPO_ROOT, env=served["env"], capture_output=True, text=True, timeout=120,
            )
            assert saved.returncode == 0, saved.stderr
            page.goto(f"{ui}/deployments/deployment/{deployment_id}")
            _log_in_if_asked(page, server, f"{ui}/deployments/deployment/{deployment_id}")
            # The template is one of the deployment's schedules, under its own name.
            expect(page.get_by_text("check-7-nightly", exact=True)).to_be_visible()
            page.screenshot(path=shots / "0-deployment-with-template.png", full_page=True)
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_text("Custom run").click()
            page.wait_for_url(re.compile(r"/run"))
            page.wait_for_load_state("networkidle")
            expect(page.get_by_text("Tenant whose accounts the batch works on", exact=False)).to_be_visible()
            page.screenshot(path=shots / "1-run-form.png", full_page=True)
            form_text = page.inner_text("body")  # the parameters' descriptions are on the form
            # Exactly tenant_id is required: every other parameter is marked optional.
            assert "tenant_id (Optional)" not in form_text and "tenant_id" in form_text
            assert "batch_id (Optional)" in form_text and "account_ids (Optional)" in form_text
            form_run_name = page.locator("input[type=text]").first.input_value()
            assert form_run_name and "tenant" not in form_run_name, form_run_name  # the form's random name
            page.locator("input[type=number]").first.fill(str(TENANT))
            page.keyboard.press("Tab")
            page.screenshot(path=shots / "2-run-form-filled.png", full_page=True)
            earlier = _flow_runs_of(server, deployment_id)  # the session's other tests may have run it
            page.get_by_role("button", name="Submit").click()

            flow_run_id = _wait(lambda: next(iter(_flow_runs_of(server, deployment_id) - earlier), None), 30,
                                "the flow run")
            final = _wait(lambda: _final_state(server, flow_run_id), 120, "the batch to finish")
            assert final.is_completed(), final.message
            assert _run_name(server, flow_run_id) == form_run_name  # the form's name is the run's, start to end
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
            page.wait_for_load_state("networkidle")
            expect(page.get_by_text(form_run_name).first).to_be_visible()
            page.screenshot(path=shots / "3-flow-run.png", full_page=True)
            expect(page.get_by_text("tenant-7", exact=True)).to_be_visible()  # the run's tags
            page.get_by_text("Artifacts", exact=True).click()
            batch_id = final.data["batch_id"] if isinstance(final.data, dict) else _batch_of(served["engine"])
            expect(page.get_by_text(f"batch-{batch_id}-failures")).to_be_visible()
            expect(page.get_by_text(f"batch-{batch_id}-progress")).to_be_visible()
            page.screenshot(path=shots / "4-artifacts.png", full_page=True)
            page.get_by_text(f"batch-{batch_id}-failures").first.click()
            page.wait_for_load_state("networkidle")
            expect(page.get_by_text(str(TENANT * 100_000 + FAILING[0]))).to_be_visible()
            failures = page.inner_text("body")
            page.screenshot(path=shots / "5-failures-table.png", full_page=True)
            for n in FAILING:
                assert str(TENANT * 100_000 + n) in failures
        finally:
            page.screenshot(path=shots / "last.png", full_page=True)
            browser.close()
    assert time.monotonic() - started < 180


def _flow_runs_of(server, deployment_id: str) -> set[str]:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with SyncPrefectClient(api=server.api_url, auth_string=server.auth_string) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return {str(r.id) for r in runs}


def _run_name(server, flow_run_id: str) -> str:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=server.api_url, auth_string=server.auth_string) as client:
        return client.read_flow_run(flow_run_id).name


def _final_state(server, flow_run_id: str):
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api=server.api_url, auth_string=server.auth_string) as client:
        state = client.read_flow_run(flow_run_id).state
    return state if state and state.is_final() else None


def _batch_of(engine) -> int:
    from sqlalchemy import text

    with engine.begin() as conn:
        return int(conn.execute(text("SELECT MAX(id) FROM la_batch_task")).scalar())
