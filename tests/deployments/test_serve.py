"""Every deployment of prefect.yaml, built as ``python -m deployments.serve`` builds it, names
an entrypoint Prefect can load: the flow module's own function, not the shared runner's.

No server needed: ``flow.to_deployment`` only builds the deployment; the served and deployed
runs themselves are in tests/deployments/test_auth_and_serving.py.
"""

from __future__ import annotations

import pytest
from prefect.flows import load_flow_from_entrypoint

from deployments.serve import runner_deployments
from deployments.spec import REPO_ROOT, DeploymentSpec, load_specs

SPECS = load_specs()


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_served_entrypoint_loads_the_flow_of_its_module(spec: DeploymentSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # as serve does: entrypoints are relative to the checkout
    (deployment,) = runner_deployments([spec])
    assert deployment.entrypoint == spec.entrypoint  # served exactly as prefect deploy registers it
    path, function = deployment.entrypoint.split(":")
    flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment.entrypoint))
    assert flow.fn.__name__ == function
    assert flow.fn.__code__.co_filename == str(REPO_ROOT / path)  # defined in that module, not the runner
    assert flow.name == deployment.flow_name
    assert deployment.name == spec.name


def test_item_flows_keep_typed_parameters() -> None:
    """The items types' run forms in the UI: ``items`` is a list of objects, ids are integers."""
    items_types = [s for s in SPECS if s.entrypoint.split(":")[1] in ("nickname_change", "avatar_change", "add_friend", "bio_change")]
    assert len(items_types) == 4
    for spec in items_types:
        schema = load_flow_from_entrypoint(str(REPO_ROOT / spec.entrypoint)).parameters.model_dump()
        props = schema["properties"]
        assert set(props) == {
            "tenant_id", "items", "items_file", "task_name", "create_admin_id", "batch_id", "takeover", "retry_failed_of",
        }
        assert props["tenant_id"]["type"] == "integer" and schema["required"] == ["tenant_id"]
        assert any(v.get("type") == "array" and v["items"].get("type") == "object" for v in props["items"]["anyOf"])
        assert props["takeover"]["type"] == "boolean"
