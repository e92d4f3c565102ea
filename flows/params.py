"""The batch flows' parameters, typed once with what the Prefect UI's Run form shows for them.

Each alias carries a description and an example (pydantic ``Field`` metadata), which Prefect
puts in the deployment's parameter schema: the form shows them under each field. Every
parameter but ``tenant_id`` has a default, so the form marks exactly one field required: every
run names its tenant, a new batch with its items, an existing row (``batch_id``: one the admin
panel inserted, or one to resume) or a retry (``retry_failed_of``) with the row's id, and the
run refuses a row of another tenant in one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, get_type_hints

from pydantic import Field
from pydantic.fields import FieldInfo

__all__ = [
    "AccountIds", "AccountIdsFile", "BatchId", "CreateAdminId", "Items", "ItemsFile", "RetryFailedOf", "Takeover",
    "TaskName", "TenantId", "document_parameters",
]

TenantId = Annotated[int, Field(
    description="Tenant whose accounts the batch works on. With batch_id or retry_failed_of: the tenant "
                "of that batch (a batch of another tenant is refused).",
    examples=[7],
)]
AccountIds = Annotated[list[int] | None, Field(
    description="Accounts to check (ids of the tenant's accounts). Empty: every active account of the tenant.",
    examples=[[700001, 700002, 700003]],
)]
AccountIdsFile = Annotated[str | None, Field(
    description="Instead of account_ids: the path of a file of account ids (a JSON list, or one id per line) "
                "on the host running the flow (a worker reads only under BATCH_ITEMS_DIR when that is set).",
    examples=["accounts.txt"],
)]
Items = Annotated[list[dict[str, Any]] | None, Field(
    description="One object per account of the tenant, as the admin panel's task_data 'items'. "
                "Needed for a new batch; leave empty when batch_id names an existing batch.",
    examples=[[{"account_id": 700001, "nickname": "Alice"}]],
)]
ItemsFile = Annotated[str | None, Field(
    description="Instead of items: the path of a JSON or CSV file of items on the host running the flow "
                "(a worker reads only under BATCH_ITEMS_DIR when that is set).",
    examples=["nicknames.csv"],
)]
TaskName = Annotated[str | None, Field(
    description="Name shown in the admin panel's task list (la_batch_task.task_name). "
                "Empty: the type's title and the tenant, e.g. 'Account check (tenant 7)'.",
    examples=["Weekly check of tenant 7"],
)]
CreateAdminId = Annotated[int, Field(
    description="Admin-panel user recorded as the batch's creator (la_batch_task.create_admin_id). "
                "0 means 'an operator via Prefect' (no panel user); rows the panel inserts keep their own.",
    examples=[0],
)]  # its range (0..2^31-1) is checked by the run, with the same one-line refusal as every entry point
RetryFailedOf = Annotated[int | None, Field(
    description="The id of a finished batch of this type: a new batch of only its failed items, linked to it "
                "(each item keeps its previous error). Refused while that batch is active or when nothing failed.",
    examples=[42],
)]

BatchId = Annotated[int | None, Field(
    description="An existing la_batch_task id: claims a pending row the admin panel inserted, or resumes "
                "a failed/cancelled batch (only its pending items run). Empty: a new batch.",
    examples=[42],
)]
Takeover = Annotated[bool, Field(
    description="With batch_id: also claim a batch still marked running whose run is gone (its lease "
                "expired). The old run is fenced out.",
)]


def document_parameters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Append an ``Args:`` section built from the parameters' ``Field`` descriptions to ``fn``'s
    docstring: Prefect takes a parameter's description in the UI from the docstring (a
    description in ``Annotated`` metadata is overwritten), its examples from the metadata."""
    hints = get_type_hints(fn, include_extras=True)
    lines = []
    for name in inspect.signature(fn).parameters:
        for meta in getattr(hints.get(name), "__metadata__", ()):
            if isinstance(meta, FieldInfo) and meta.description:
                lines.append(f"    {name}: {meta.description}")
    if lines:
        fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn
