"""pin_sync: keep la_ipfs_pin in step with the recursive pins of the tenant's IPFS node.

``collect`` streams ``pin/ls`` (Kubo RPC, docs/kubo-api.md) before the batch opens: one detail
row per pin, ``item_data`` ``{"cid": ...}``. A listing that breaks (the node goes away
mid-stream) is retried from the start up to ``http_max_retries`` times; after that the batch is
recorded ``failed`` with the reason, nothing is written to the pins table (a partial listing
must not mark pins removed), and a resume lists again.

``handle`` stats each pin (``files/stat``, offline). A pin gone between list and stat fails with
``not pinned: ...`` and is marked removed; any other failure keeps its reason in the detail row
and the pin counts as present (it was listed). ``apply`` upserts the pins seen (set-based).
``on_close``: when the batch completes, the tenant's present pins this batch did not list are
marked removed (one UPDATE); the batch's ``error_message`` gets the first 10 failed pins.

Item ids: ``cid_key(cid)`` is a stable number in 1..2^31-1 (sha256 of the CID, first 4 bytes,
mod 2^31-1, plus 1). Two CIDs of one listing with the same key are resolved by linear probing
in CID order (the later CID takes the next free number), so a key is stable between syncs
unless its CID collides (for 10,000 pins the chance of any collision is about 2%); the CID in
``item_data`` is what identifies a pin, the number only keys the detail row.

The tenant's node: its entry in ``BATCH_KUBO_NODES`` (a JSON map tenant -> Kubo RPC URL), else
``BATCH_KUBO_URL``. The URL comes from the worker's environment, never from a flow parameter
(it may carry credentials). The one-active-batch guard is per (tenant, pin_sync), hence one sync
per node when every tenant has its own node.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from batchcore.errors import InvalidItems, KuboError, KuboUnavailable, PinNotFound
from batchcore.outcomes import ItemOutcome
from batchcore.settings import Settings
from batchlib.backoff import RetriesExhausted
from batchlib.batch_types import BatchScope, BatchType, Item, register
from batchlib.item_context import ItemContext
from batchlib.kubo_client import KuboClient
from batchlib.validation import check_tenant
from db import failed_items, mark_pins_removed, record_pins, remove_unseen_pins

NAME = "pin_sync"
PIN_TYPE = "recursive"
MAX_KEY = 2**31 - 1
SUMMARY_FAILURES = 10
log = logging.getLogger(__name__)


def cid_key(cid: str) -> int:
    return int.from_bytes(hashlib.sha256(cid.encode()).digest()[:4], "big") % MAX_KEY + 1


def keyed(cids: Sequence[str]) -> list[Item]:
    """``(item_id, {"cid"})`` per distinct CID, in listing order; collisions probed in CID order."""
    unique = list(dict.fromkeys(cids))
    keys: dict[str, int] = {}
    taken: set[int] = set()
    for cid in sorted(unique):
        key = cid_key(cid)
        while key in taken:
            key = key % MAX_KEY + 1
        taken.add(key)
        keys[cid] = key
    return [(keys[cid], {"cid": cid}) for cid in unique]


def parse(session: Session, tenant_id: int, task_data: Mapping[str, Any], settings: Settings) -> list[Item]:
    """No input but the tenant: the items are the node's pins (``collect``)."""
    check_tenant(session, tenant_id)
    if task_data:
        raise InvalidItems(f"pin_sync takes no task_data, got keys {sorted(task_data)[:10]}")
    return []


async def collect(settings: Settings, tenant_id: int, task_data: Mapping[str, Any]) -> list[Item]:
    def relist(exc: BaseException, pause: float) -> None:
        log.warning("pin/ls of tenant %s broke (%s); listing again", tenant_id, getattr(exc, "reason", exc))

    async with KuboClient.from_settings(settings, tenant_id) as kubo:
        try:  # a broken stream (KuboUnavailable): list again from the start
            pins = await kubo.retry.retrying(lambda: kubo.list_pins(PIN_TYPE), transient=KuboUnavailable,
                                             on_retry=relist)
        except RetriesExhausted as spent:
            raise spent.last from None  # type: ignore[misc]  # the last KuboUnavailable, as before
    return keyed([pin.cid for pin in pins])


async def handle(ctx: ItemContext, item_id: int, item_data: dict[str, Any] | None) -> ItemOutcome:
    assert ctx.kubo is not None
    cid = (item_data or {}).get("cid")
    if not isinstance(cid, str):
        return ItemOutcome.failed(item_id, "item has no cid")
    try:
        stat = await ctx.kubo.stat(cid)
    except PinNotFound as exc:
        return ItemOutcome.failed(item_id, exc.reason, cid=cid, vanished=True)
    except KuboError as exc:
        return ItemOutcome.failed(item_id, exc.reason, cid=cid)
    return ItemOutcome.success(item_id, cid=cid, size=stat.cumulative_size, blocks=stat.blocks, type=stat.type)


def apply(session: Session, outcomes: Sequence[ItemOutcome], now: int, scope: BatchScope) -> None:
    """Listed pins are present (with their size when the stat worked); vanished ones removed."""
    seen = [(o.result["cid"], PIN_TYPE, o.result.get("size")) for o in outcomes if o.result and not o.result.get("vanished")]
    gone = [o.result["cid"] for o in outcomes if o.result and o.result.get("vanished")]
    record_pins(session, scope.tenant_id, scope.batch_id, seen, now)
    mark_pins_removed(session, scope.tenant_id, gone, now)


def on_close(session: Session, scope: BatchScope, status: str, now: int) -> str | None:
    if status == "completed":
        removed = remove_unseen_pins(session, scope.tenant_id, scope.batch_id, now)
        log.info("pin_sync batch %s: %s pins no longer on the node marked removed", scope.batch_id, removed)
    failed, first = failed_items(session, scope.batch_id, SUMMARY_FAILURES)
    if not failed:
        return None
    shown = "; ".join(f"{(data or {}).get('cid', '?')}: {error[:120]}" for data, error in first)
    return f"{failed} pin(s) failed; first {len(first)}: {shown}"


PIN_SYNC = register(
    BatchType(
        NAME, "IPFS pin sync", parse, handle, apply, collect=collect,
        uses_platform=False, uses_kubo=True, on_close=on_close,
    )
)
