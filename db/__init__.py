"""Database layer: models, engines, migrations and the mirror/account repositories."""

from __future__ import annotations

from db.accounts import (
    StoredTokens,
    active_account_ids,
    active_accounts_query,
    foreign_ids,
    import_accounts,
    load_credentials,
    load_credentials_many,
    record_checks,
    save_credentials,
    set_profiles,
    tenant_exists,
    tenants_with_accounts,
    update_profile,
    upsert_accounts,
)
from db.engine import database_url, get_engine, make_engine
from db.friends import log_friend_requests, sent_today_for_batch, unlogged
from db.maintenance import (
    fail_stale_batches,
    mark_failed_unowned,
    pending_batches,
    prune_finished,
    running_batches,
)
from db.migrate import current, upgrade
from db.mirror import (
    Claim,
    Counts,
    Moved,
    add_details,
    add_details_from,
    check_fence,
    claim_batch,
    counters,
    create_batch,
    find_active,
    finish_batch,
    get_batch,
    heartbeat,
    pending_items,
    record_outcomes,
    recount,
    set_total,
    stage_details,
    staged_details,
)
from db.models import Account, BatchRun, BatchTask, BatchTaskDetail, FriendRequestLog, IpfsPin
from db.pins import PIN_PRESENT, PIN_REMOVED, failed_items, mark_pins_removed, record_pins, remove_unseen_pins
from db.retry import is_retryable, run_transaction

__all__ = [
    "Account", "BatchRun", "BatchTask", "BatchTaskDetail", "FriendRequestLog",
    "make_engine", "get_engine", "database_url", "run_transaction", "is_retryable", "upgrade", "current",
    "Claim", "Counts", "Moved",
    "create_batch", "claim_batch", "check_fence", "heartbeat", "add_details", "add_details_from", "set_total",
    "pending_items", "record_outcomes", "finish_batch", "recount", "counters", "get_batch",
    "stage_details", "staged_details",
    "find_active", "fail_stale_batches", "mark_failed_unowned", "prune_finished", "pending_batches",
    "running_batches", "load_credentials_many",
    "StoredTokens", "tenant_exists", "active_account_ids", "active_accounts_query", "foreign_ids", "load_credentials",
    "save_credentials", "record_checks", "update_profile", "upsert_accounts", "tenants_with_accounts",
    "set_profiles", "import_accounts", "IpfsPin", "sent_today_for_batch", "log_friend_requests", "unlogged",
    "PIN_PRESENT", "PIN_REMOVED", "record_pins", "mark_pins_removed", "remove_unseen_pins", "failed_items",
]
