"""One typed settings object, read from ``BATCH_*`` environment variables (and ``.env``).

The defaults run on a fresh machine: a SQLite mirror in the working directory, no Redis
(the database is the only guard), the bundled platform simulator on loopback.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["MAX_CONCURRENCY", "Settings", "get_settings"]

MAX_CONCURRENCY = 1000  # platform calls in flight for one (tenant, type), whatever a limit says


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BATCH_", env_file=".env", extra="ignore")

    # Where things are
    database_url: SecretStr = SecretStr("sqlite:///./batch_mirror.db")
    redis_url: SecretStr | None = None
    redis_key_prefix: str = "batch:"
    platform_url: str = "http://127.0.0.1:8900"
    platform_proxy_url: SecretStr | None = None  # HTTP proxy to the platform (HTTP(S)_PROXY is not read)
    kubo_url: str = "http://127.0.0.1:5001"  # the IPFS node (Kubo RPC) of tenants not in kubo_nodes
    kubo_nodes: dict[int, str] = Field(default_factory=dict)  # tenant -> its node, e.g. {"7": "http://10.0.0.7:5001"}

    # Concurrency: platform calls in flight per (tenant, batch type)
    concurrency: int = Field(50, ge=1, le=MAX_CONCURRENCY)
    concurrency_per_type: dict[str, int] = Field(default_factory=dict)
    # "tenant:type" or "tenant" -> limit, e.g. {"7": 10, "8:add_friend": 2}
    concurrency_per_tenant: dict[str, int] = Field(default_factory=dict)
    # The limits above are the defaults of Prefect global concurrency limits batch:<tenant>:<type>
    # (created on first use; operators change them in the UI). A running batch re-reads its limit:
    limit_poll_s: float = Field(3.0, gt=0)
    limit_api_timeout_s: float = Field(5.0, gt=0)  # past this, a read counts as "API unreachable"
    # Limits shared by batches in many processes (docs/concurrency.md), slots leased in blocks in Redis:
    # a tenant's total over all its types (the default of the Prefect limit batch:<tenant>; none: no
    # total unless an operator creates that limit), e.g. {"7": 80}
    tenant_max_in_flight: dict[int, int] = Field(default_factory=dict)
    # calls in flight to the platform from all tenants and workers (the default of batch:platform;
    # None: no cap unless an operator creates that limit), shared evenly by the active tenants
    platform_max_in_flight: int | None = Field(None, ge=1)
    platform_fallback_in_flight: int | None = Field(None, ge=1)  # per batch while Redis is down; None: the cap
    share_heartbeat_s: float = Field(1.0, gt=0)  # how often a batch renews its blocks (and reports its calls in flight)
    share_lease_s: float = Field(30.0, gt=0)  # a dead (or stalled) process's blocks come back after this

    # Runner
    chunk_threshold: int = Field(500, ge=0)  # above this many items, items are grouped in chunk tasks
    chunk_size: int = Field(250, ge=1)
    # A bigger batch gets bigger chunks, so that it has at most this many chunk task runs: each
    # costs the Prefect server ~50 ms of CPU (docs/benchmarks.md), paid while the batch runs.
    chunks_max: int = Field(100, ge=1)
    # Helper processes handling a big batch's platform calls (0: the run's own event loop only);
    # used by batches of at least item_processes_min_items pending items (starting one costs ~1 s of CPU)
    item_processes: int = Field(0, ge=0, le=32)
    item_processes_min_items: int = Field(20_000, ge=0)
    flush_interval_s: float = Field(0.5, gt=0)  # mirror flush period (admin panel sees progress)
    flush_max_items: int = Field(500, ge=1)
    detail_insert_chunk: int = Field(5000, ge=1)
    max_items: int = Field(100_000, ge=1)
    items_dir: str | None = None  # when set, a run's items_file parameter must be a file in this folder

    # Locks and liveness
    lock_ttl_s: float = Field(30.0, gt=0)
    heartbeat_interval_s: float = Field(5.0, gt=0)
    reaper_stale_after_s: int = Field(60, ge=10)  # keep above lock_ttl_s: a resume must find the lease free
    auto_resume_max: int = Field(3, ge=0)  # automatic resumes per batch after its run died; 0: never
    db_outage_budget_s: float = Field(60.0, gt=0)  # stop a batch when the mirror stays unwritable this long
    cancel_poll_s: float = Field(2.0, gt=0)  # how often a run asks Prefect whether it is being cancelled
    progress_log_s: float = Field(2.0, gt=0)

    # History
    prune_after_days: int = Field(30, ge=1)
    prune_chunk: int = Field(500, ge=1)
    prune_hard_delete: bool = True

    # HTTP
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0  # whole body after the headers (a trickling answer never hits the read timeout)
    http_max_retries: int = Field(3, ge=0)
    http_backoff_base_s: float = 0.2
    http_backoff_max_s: float = 5.0
    http_retry_after_max_s: float = 30.0
    http_max_body_bytes: int = 1_000_000

    # The accounts table: the admin system's own (adopted), or the default one the migrations
    # create on a fresh database. One setting per column we use; an optional column set to ""
    # means the table has none (it is then never read or written). Checked at start.
    account_table: str = "la_alt_account"
    account_col_id: str = "id"
    account_col_tenant_id: str = "tenant_id"
    account_col_platform_uid: str = "platform_uid"
    account_col_access_token: str = "access_token"
    account_col_refresh_token: str = "refresh_token"
    account_col_status: str = "status"
    account_col_nickname: str = "nickname"  # optional from here on
    account_col_avatar_url: str = "avatar_url"
    account_col_token_expires_at: str = "token_expires_at"
    account_col_last_check_time: str = "last_check_time"
    account_col_update_time: str = "update_time"
    account_col_create_time: str = "create_time"
    account_col_delete_time: str = "delete_time"  # soft delete: NULL or 0 means live
    account_col_token_version: str = "token_version"
    # Our account status -> the value stored in the table (or a list: the first is written, all
    # are read), e.g. {"alive": 1, "banned": 2, "disabled": [3, 4], "restricted": 5}. Empty: the
    # table stores our own names (alive, banned, restricted, unknown, disabled).
    account_status_map: dict[str, int | str | list[int | str]] = Field(default_factory=dict)

    # Batch types
    add_friend_daily_cap: int = Field(20, ge=0)  # friend requests one account may send per day
    add_friend_day_timezone: str = "UTC"  # the time zone whose calendar day the cap counts

    # Notifications when a batch ends. Keys: "tenant:type", "tenant", "type" or "*"; the most
    # specific key present wins, e.g. {"7": ["ops@example.com"], "7:add_friend": [...], "*": [...]}
    notify_email: dict[str, list[str]] = Field(default_factory=dict)
    notify_webhooks: dict[str, list[SecretStr]] = Field(default_factory=dict)  # URLs may carry a token
    smtp_url: SecretStr | None = None  # smtp://user:password@host:587?starttls=true, smtps://host:465
    notify_from: str = "batch-operations@localhost"
    notify_attempts: int = Field(4, ge=1)  # per channel, with backoff between attempts
    notify_timeout_s: float = Field(10.0, gt=0)  # one attempt (connect + send)
    notify_deadline_s: float = Field(60.0, gt=0)  # all attempts of one ending; also the most a process waits at exit
    notify_backoff_base_s: float = Field(1.0, ge=0)
    notify_backoff_max_s: float = Field(10.0, ge=0)

    def kubo_url_for(self, tenant_id: int | None) -> str:
        """The tenant's IPFS node: its entry in ``kubo_nodes``, else ``kubo_url``."""
        return self.kubo_nodes.get(tenant_id, self.kubo_url)  # type: ignore[arg-type]  # None: the default

    def concurrency_for(self, tenant_id: int, task_type: str) -> int:
        """Most specific wins: tenant:type, then tenant, then type, then the default."""
        for key, table in (
            (f"{tenant_id}:{task_type}", self.concurrency_per_tenant),
            (str(tenant_id), self.concurrency_per_tenant),
            (task_type, self.concurrency_per_type),
        ):
            if key in table:
                return max(1, int(table[key]))
        return self.concurrency


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
