"""Every error a user or operator can meet, under one root.

    BatchError
    ├── InvalidInput                 bad parameters; nothing was written
    │   ├── UnknownTenant
    │   ├── ForeignAccounts
    │   ├── UnknownBatchType
    │   └── InvalidItems
    ├── UnknownBatch
    ├── BatchNotClaimable            the batch is in a state that cannot be (re)started
    │   └── BatchCancelled           the admin panel cancelled or deleted it before it started
    ├── BatchAlreadyActive           another pending/running batch of that tenant and type
    ├── StaleFence                   this run no longer owns the batch (taken over)
    ├── LockLost                     the Redis lease was lost while running
    ├── DatabaseUnavailable          the mirror stayed unreachable past the outage budget
    ├── AccountTableMismatch         the accounts table is not what the BATCH_ACCOUNT_* settings describe
    └── ServiceError                 an outside service call failed (``reason``: short, no tokens)
        ├── PlatformError            the account platform (batchlib.platform_client)
        │   ├── PlatformUnavailable  5xx / timeouts / connection errors past the retry budget
        │   ├── RateLimited          429 past the retry budget
        │   ├── TokenRefreshFailed   the refresh token was refused
        │   ├── PlatformRejected     a terminal 4xx (bad request, banned, not found...)
        │   └── BadPlatformResponse  a body we cannot read (HTML, truncated, too large)
        └── KuboError                the tenant's IPFS node, Kubo RPC (batchlib.kubo_client)
            ├── KuboUnavailable      5xx / timeouts / connection errors past the retry budget,
            │                        or a pin/ls stream that broke before its clean end
            ├── KuboRateLimited      429 past the retry budget
            ├── KuboRejected         400/403/404/405, or a 500 no retry can fix (invalid path)
            │   └── PinNotFound      files/stat says the pin's root block is gone; never retried
            └── BadKuboResponse      a body or line that is not the JSON we expect, or too large

Each message is written for the person who has to act on it.
"""

from __future__ import annotations

__all__ = [
    "BatchError",
    "InvalidInput",
    "UnknownTenant",
    "ForeignAccounts",
    "UnknownBatchType",
    "InvalidItems",
    "UnknownBatch",
    "BatchNotClaimable",
    "BatchCancelled",
    "BatchAlreadyActive",
    "StaleFence",
    "LockLost",
    "DatabaseUnavailable",
    "AccountTableMismatch",
    "ServiceError",
    "PlatformError",
    "PlatformUnavailable",
    "RateLimited",
    "TokenRefreshFailed",
    "PlatformRejected",
    "BadPlatformResponse",
    "KuboError",
    "KuboUnavailable",
    "KuboRateLimited",
    "KuboRejected",
    "PinNotFound",
    "BadKuboResponse",
]


class BatchError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidInput(BatchError):
    """The request is malformed; nothing was written."""


class UnknownTenant(InvalidInput):
    def __init__(self, tenant_id: object) -> None:
        super().__init__(f"unknown tenant {tenant_id!r}: it has no accounts")
        self.tenant_id = tenant_id


class ForeignAccounts(InvalidInput):
    def __init__(self, tenant_id: int, account_ids: list[int]) -> None:
        shown = ", ".join(str(i) for i in account_ids[:10])
        more = f" and {len(account_ids) - 10} more" if len(account_ids) > 10 else ""
        super().__init__(
            f"{len(account_ids)} account id(s) are not active accounts of tenant {tenant_id}: {shown}{more}"
        )
        self.tenant_id = tenant_id
        self.account_ids = account_ids


class UnknownBatchType(InvalidInput):
    def __init__(self, task_type: object, known: list[str]) -> None:
        super().__init__(f"unknown batch type {task_type!r}; known types: {', '.join(sorted(known))}")
        self.task_type = task_type


class InvalidItems(InvalidInput):
    """Items or parameters that fail validation; the message lists the first problems."""


class UnknownBatch(BatchError):
    def __init__(self, batch_id: int) -> None:
        super().__init__(f"batch {batch_id} does not exist")
        self.batch_id = batch_id


class BatchNotClaimable(BatchError):
    def __init__(self, batch_id: int, status: str, why: str = "") -> None:
        super().__init__(f"batch {batch_id} is {status} and cannot be started{': ' + why if why else ''}")
        self.batch_id = batch_id
        self.status = status


class BatchCancelled(BatchNotClaimable):
    """Cancelled (``how="cancelled"``) or soft-deleted (``how="deleted"``) before any run started it."""

    def __init__(self, batch_id: int, how: str) -> None:
        BatchError.__init__(self, f"batch {batch_id} was {how} before it started; nothing was done")
        self.batch_id = batch_id
        self.status = how


class BatchAlreadyActive(BatchError):
    def __init__(self, tenant_id: int, task_type: str, batch_id: int | None = None) -> None:
        which = f" (batch {batch_id})" if batch_id else ""
        super().__init__(
            f"another {task_type} batch of tenant {tenant_id} is already pending or running{which}; "
            "wait for it to finish or cancel it"
        )
        self.tenant_id = tenant_id
        self.task_type = task_type
        self.batch_id = batch_id


class StaleFence(BatchError):
    def __init__(self, batch_id: int, fence: int) -> None:
        super().__init__(f"batch {batch_id} was taken over by another run (our fence {fence} is stale)")
        self.batch_id = batch_id
        self.fence = fence


class LockLost(BatchError):
    def __init__(self, key: str) -> None:
        super().__init__(f"the lease {key} was lost; stopping so the new owner can continue")
        self.key = key


class DatabaseUnavailable(BatchError):
    def __init__(self, batch_id: int, budget_s: float, what: str) -> None:
        super().__init__(
            f"the database was unreachable for {budget_s:g}s ({what}); batch {batch_id} is left running: "
            "the reaper marks it failed, then resume it (only its unfinished items run again)"
        )
        self.batch_id = batch_id


class AccountTableMismatch(BatchError):
    """The accounts table lacks a configured column, or a column has an unusable type.

    Raised at start (opening the mirror, ``python -m db upgrade``), before anything is written.
    """


class ServiceError(BatchError):
    """An outside service call failed; ``reason`` is short and safe to store (no tokens)."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class PlatformError(ServiceError):
    """A call to the account platform failed."""


class PlatformUnavailable(PlatformError):
    pass


class RateLimited(PlatformError):
    pass


class TokenRefreshFailed(PlatformError):
    pass


class PlatformRejected(PlatformError):
    pass


class BadPlatformResponse(PlatformError):
    pass


class KuboError(ServiceError):
    """A call to the tenant's IPFS node (Kubo RPC) failed."""


class KuboUnavailable(KuboError):
    pass


class KuboRateLimited(KuboError):
    pass


class KuboRejected(KuboError):
    pass


class PinNotFound(KuboRejected):
    """The pin was listed but its root block is gone (unpinned and collected): not retried."""

    def __init__(self, cid: str, message: str) -> None:
        super().__init__(f"not pinned: {cid} is no longer on the node ({message[:200]})", status_code=500)
        self.cid = cid


class BadKuboResponse(KuboError):
    pass
