"""The registry of batch types: how each one validates its input and handles one item.

A batch type is declared once, by a module of ``batchlib.handlers`` that calls ``register``
(the registry imports every module of that package), plus its flow module
``flows/<name>.py`` whose ``@batch_flow(TASK_TYPE)`` function is also named ``<name>``. Everything
else derives from the declaration: the flow and deployment name (``account_check`` ->
``account-check/account-check``), the dispatcher's map, the batch deployments in prefect.yaml
and the table in docs/batch-types.md (``python -m deployments.generate --write`` rewrites both;
a test fails when they differ).

A batch type is data, not a class hierarchy:

- ``parse(session, tenant_id, task_data, settings)`` validates the whole request against the
  database (read-only) and returns the items ``[(item_id, item_data), ...]``; it raises an
  ``InvalidInput`` with a message a user can act on, and writes nothing;
- ``handle(ctx, item_id, item_data)`` does the work for one item and returns an
  ``ItemOutcome`` (token-free); platform errors become failed outcomes;
- ``item_query(session, tenant_id, task_data, settings)`` (optional) is ``parse`` for a request
  whose items are a set the database can select itself (an account check of a whole tenant):
  it validates the same way and returns that ``SELECT`` of item ids (None: the request lists its
  items, use ``parse``); the run then writes the detail rows with one ``INSERT ... SELECT``
  instead of reading the ids and shipping them back;
- ``collect(settings, tenant_id, task_data)`` (optional, async) discovers the items from an
  outside service before the batch opens (pin_sync lists the node's pins); ``parse`` then
  only validates ``task_data`` and its returned items are replaced by the collected ones;
- ``apply(session, outcomes, now, scope)`` (optional) mirrors the outcomes into our own tables in the
  same short transaction that records them, so side effects are batched and idempotent;
- ``prepare(session, ctx)`` (optional) runs once per run, in one read-only transaction, before
  any item is handled; what it returns is ``ctx.state`` for every ``handle`` call of that run
  (add_friend seeds its daily-cap counts from it);
- ``inputs``: the keys its ``task_data`` may hold, with their JSON types; any other key is
  refused (a misspelt ``acount_ids`` must not widen a batch to every account). ``staged_as``
  names the input whose list can instead be staged as detail rows (``items``: the item
  objects go in ``item_data``; ``account_ids``: the ids are the ``item_id`` values), and
  ``item_keys`` the keys one item may hold (also the CSV columns of an items file);
- ``on_close(session, scope, status, now)`` (optional) runs in the transaction that finishes the batch
  (after the fence check): whole-batch side effects (pin_sync marks the pins it did not see as
  removed) and the batch's ``error_message`` summary, returned as a string or None. Every path
  that ends a batch calls it: the runner's close, the hooks of a cancelled/crashed/failed run,
  and the reaper (with status ``failed``), so it must not assume the run is still alive.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from batchcore.errors import ServiceError, UnknownBatchType
from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.item_context import ItemContext

__all__ = ["Item", "BatchType", "BatchScope", "register", "get_batch_type", "batch_type_names", "batch_types"]

log = logging.getLogger(__name__)

Item = tuple[int, dict[str, Any] | None]
Parse = Callable[[Session, int, Mapping[str, Any], Settings], list[Item]]
Handle = Callable[[ItemContext, int, dict[str, Any] | None], Awaitable[ItemOutcome]]


@dataclass(frozen=True, slots=True)
class BatchScope:
    """Which batch ``apply`` and ``on_close`` work for."""

    batch_id: int
    tenant_id: int


Apply = Callable[[Session, Sequence[ItemOutcome], int, BatchScope], None]
Collect = Callable[[Settings, int, Mapping[str, Any]], Awaitable[list[Item]]]
Prepare = Callable[[Session, ItemContext], Any]
ItemQuery = Callable[[Session, int, Mapping[str, Any], Settings], "Select[tuple[int]] | None"]
OnClose = Callable[[Session, BatchScope, str, int], str | None]  # (session, scope, final status, now)


@dataclass(frozen=True, slots=True)
class BatchType:
    name: str
    title: str
    parse: Parse
    handle: Handle
    apply: Apply | None = None
    collect: Collect | None = None
    uses_platform: bool = True
    uses_kubo: bool = False
    prepare: Prepare | None = None
    on_close: OnClose | None = None
    item_query: ItemQuery | None = None
    inputs: Mapping[str, type] = field(default_factory=dict)
    staged_as: str | None = None
    item_keys: tuple[str, ...] = ("account_id",)

    @property
    def flow_name(self) -> str:
        """The Prefect flow's (and its deployment's) name: ``account_check`` -> ``account-check``."""
        return self.name.replace("_", "-")

    @property
    def deployment(self) -> str:
        """What the dispatcher and the reaper run: ``"<flow name>/<deployment name>"``."""
        return f"{self.flow_name}/{self.flow_name}"

    async def outcome_of(self, ctx: ItemContext, item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
        """``handle`` with every failure as a failed outcome: a service's error with its reason, a
        handler bug as ``internal error: <exception type>`` (logged with its traceback)."""
        try:
            return await self.handle(ctx, item_id, item_data)
        except ServiceError as exc:
            return ItemOutcome.failed(item_id, exc.reason)
        except Exception as exc:  # a handler bug must not sink the batch
            log.exception("item %s of batch %s failed unexpectedly", item_id, ctx.batch_id)
            return ItemOutcome.failed(item_id, f"internal error: {type(exc).__name__}")

    @property
    def runs_in_item_processes(self) -> bool:
        """Whether helper processes may handle its items: platform calls only, no per-run state."""
        return self.uses_platform and not self.uses_kubo and self.prepare is None

    def run_name(self, tenant_id: object, batch_id: object = None) -> str:
        """A flow-run name that says what runs: ``account-check-batch-42`` for a run of an existing
        row, ``account-check-tenant-7`` for a new batch."""
        if batch_id is not None:
            return f"{self.flow_name}-batch-{batch_id}"
        return f"{self.flow_name}-tenant-{tenant_id}"

    @property
    def entrypoint(self) -> str:
        """The flow function, ``flows/<name>.py:<name>`` (prefect.yaml's entrypoint)."""
        return f"flows/{self.name}.py:{self.name}"


_REGISTRY: dict[str, BatchType] = {}


def register(batch_type: BatchType) -> BatchType:
    _REGISTRY[batch_type.name] = batch_type
    return batch_type


_loaded = False


def _load_builtin() -> None:
    """Import every module of ``batchlib.handlers``: each one registers its type. (Imported
    here, not at the top: the handler modules import this one.)"""
    global _loaded
    if _loaded:
        return
    import batchlib.handlers

    for module in pkgutil.iter_modules(batchlib.handlers.__path__):
        importlib.import_module(f"batchlib.handlers.{module.name}")
    _loaded = True


def get_batch_type(name: object) -> BatchType:
    _load_builtin()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownBatchType(name, list(_REGISTRY))
    return _REGISTRY[name]


def batch_type_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def batch_types() -> list[BatchType]:
    """Every registered type, by name."""
    _load_builtin()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
