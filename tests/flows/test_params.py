"""The Run form of every batch deployment: each parameter has a description and its type; no
server needed (the schema is what ``prefect deploy`` / ``serve`` send to the UI)."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from flows.account_check import account_check
from flows.add_friend import add_friend
from flows.avatar_change import avatar_change
from flows.bio_change import bio_change
from flows.nickname_change import nickname_change
from flows.pin_sync import pin_sync

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("flow", [account_check, nickname_change, avatar_change, add_friend, bio_change, pin_sync],
                         ids=lambda f: f.name)
def test_every_parameter_is_described_for_the_run_form(flow) -> None:
    schema = parameter_schema(flow.fn).model_dump()
    properties = schema["properties"]
    assert {"tenant_id", "task_name", "create_admin_id", "batch_id", "takeover"} <= set(properties)
    for name, prop in properties.items():
        assert len(prop.get("description") or "") > 20, name
    assert properties["tenant_id"]["examples"] == [7]
    assert properties["create_admin_id"]["default"] == 0 and "operator via Prefect" in properties["create_admin_id"]["description"]
    # Every run names its tenant (with batch_id too, checked against the row): the one required field.
    assert schema.get("required", []) == ["tenant_id"]
    assert properties["tenant_id"]["type"] == "integer" and "default" not in properties["tenant_id"]
