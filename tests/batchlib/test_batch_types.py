"""The batch-type registry: every declared type has its flow, and what derives from the
declarations (the dispatcher's map, prefect.yaml, the docs' table) matches them."""

from __future__ import annotations

import importlib
import inspect
from typing import get_type_hints

import pytest
import yaml

from batchcore.errors import UnknownBatchType
from batchlib.batch_types import batch_type_names, batch_types, get_batch_type
from deployments import generate
from flows import params
from flows.dispatcher import DEPLOYMENTS

pytestmark = pytest.mark.unit

PARAMETER_TYPES = [getattr(params, name) for name in params.__all__ if name != "document_parameters"]


@pytest.mark.parametrize("batch_type", batch_types(), ids=lambda t: t.name)
def test_each_type_has_its_flow_named_after_it(batch_type) -> None:
    module = importlib.import_module(f"flows.{batch_type.name}")
    flow = getattr(module, batch_type.name)
    assert flow.name == batch_type.flow_name == batch_type.deployment.split("/")[0]
    assert module.TASK_TYPE == batch_type.name
    signature = inspect.signature(flow.fn)
    hints = get_type_hints(flow.fn, include_extras=True)
    untyped = [name for name in signature.parameters if hints.get(name) not in PARAMETER_TYPES]
    assert untyped == [], "a batch flow's parameters take their types from flows/params.py"
    assert "tenant_id" in signature.parameters and "batch_id" in signature.parameters


def test_the_dispatcher_runs_every_type_and_nothing_else() -> None:
    assert DEPLOYMENTS == {t.name: f"{t.flow_name}/{t.flow_name}" for t in batch_types()}
    assert sorted(DEPLOYMENTS) == batch_type_names()


def test_prefect_yaml_and_the_docs_table_match_the_declarations() -> None:
    stale = [str(path) for path, (now, wanted) in generate.regenerate().items() if now != wanted]
    assert stale == [], "run python -m deployments.generate --write"
    deployments = yaml.safe_load(generate.PREFECT_YAML.read_text())["deployments"]
    batch = {d["name"]: d for d in deployments if "batch" in d.get("tags", ())}
    assert sorted(batch) == sorted(t.flow_name for t in batch_types())
    for t in batch_types():
        assert batch[t.flow_name]["entrypoint"] == t.entrypoint
        assert batch[t.flow_name]["tags"] == ["batch", t.name]
        assert batch[t.flow_name]["work_pool"]["name"] == "batch-pool"


def test_the_generated_parts_are_found_only_between_their_markers(tmp_path) -> None:
    text = "head\n" + "".join(generate.DOC_MARKERS) + "tail\n"
    assert generate._replace_between(text, generate.DOC_MARKERS, "T\n", tmp_path) == (
        "head\n" + generate.DOC_MARKERS[0] + "T\n" + generate.DOC_MARKERS[1] + "tail\n"
    )
    with pytest.raises(SystemExit, match="exactly one"):
        generate._replace_between("no markers\n", generate.DOC_MARKERS, "T\n", tmp_path)


@pytest.mark.parametrize("name", ["", "bio-change", "Bio_change", None, 7])
def test_an_unknown_type_names_the_known_ones(name) -> None:
    with pytest.raises(UnknownBatchType) as caught:
        get_batch_type(name)
    assert all(known in str(caught.value) for known in batch_type_names())


def test_bio_change_is_declared_by_its_own_modules() -> None:
    bio = get_batch_type("bio_change")
    assert (bio.deployment, bio.entrypoint) == ("bio-change/bio-change", "flows/bio_change.py:bio_change")
    assert bio.apply is None and bio.uses_platform and bio.item_keys == ("account_id", "bio")
