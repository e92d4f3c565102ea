"""Typed ORM models. The two ``la_batch_task*`` tables match the admin panel's DDL exactly.

Migrations (``db/migrations``) own the schema; these models describe it at head. The
MariaDB-only generated column ``la_batch_task.run_key`` (the one-running-batch guard) is
deliberately not mapped, so the ORM never writes it.
"""

from __future__ import annotations

from typing import ClassVar, Optional

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "BatchTask", "BatchTaskDetail", "BatchRun", "Account", "FriendRequestLog", "IpfsPin", "BatchTemplate",
           "columns_of"]


class Base(DeclarativeBase):
    __repr_attrs__: ClassVar[tuple[str, ...]] = ("id",)

    def __repr__(self) -> str:
        shown = ", ".join(f"{a}={getattr(self, a, None)!r}" for a in self.__repr_attrs__)
        return f"{type(self).__name__}({shown})"


class BatchTask(Base):
    __tablename__ = "la_batch_task"
    __table_args__ = (
        Index("idx_tenant_task", "tenant_id", "task_type"),
        Index("idx_status", "task_status"),
        Index("idx_create_time", "create_time"),
    )
    __repr_attrs__ = ("id", "tenant_id", "task_type", "task_status")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    task_name: Mapped[str] = mapped_column(String(255))
    task_type: Mapped[str] = mapped_column(String(50))
    task_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    total_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    processed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    success_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    task_data: Mapped[Optional[str]] = mapped_column(Text)
    create_admin_id: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[Optional[int]] = mapped_column(Integer)
    end_time: Mapped[Optional[int]] = mapped_column(Integer)
    error_message: Mapped[Optional[str]] = mapped_column(Text)
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)
    delete_time: Mapped[Optional[int]] = mapped_column(Integer)


class BatchTaskDetail(Base):
    __tablename__ = "la_batch_task_detail"
    __table_args__ = (
        Index("idx_task_id", "task_id"),
        Index("idx_status", "status"),
        UniqueConstraint("task_id", "item_id", name="uq_detail_task_item"),
        Index("idx_detail_task_status", "task_id", "status"),
    )
    __repr_attrs__ = ("id", "task_id", "item_id", "status")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(Integer, ForeignKey("la_batch_task.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(Integer)
    item_data: Mapped[Optional[str]] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    result: Mapped[Optional[str]] = mapped_column(Text)
    error_message: Mapped[Optional[str]] = mapped_column(Text)
    process_time: Mapped[Optional[int]] = mapped_column(Integer)
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)


class BatchRun(Base):
    """Run ownership of a batch: ``fence`` grows on every claim; stale owners are fenced out."""

    __tablename__ = "la_batch_run"
    __repr_attrs__ = ("task_id", "fence", "owner", "flow_run_id", "heartbeat_time")

    task_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("la_batch_task.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    flow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    owner: Mapped[Optional[str]] = mapped_column(String(255))
    heartbeat_time: Mapped[Optional[int]] = mapped_column(Integer)
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # automatic resumes (migration 0006)
    notified_status: Mapped[Optional[str]] = mapped_column(String(64))  # "<status>@<end_time>" last notified


class Account(Base):
    """A platform account of a tenant in our default accounts table (fresh installations).

    The repositories do not use this model: they go through ``db.account_table``, which also
    describes an adopted table of the admin system. Token columns never appear in ``repr()``.
    """

    __tablename__ = "la_alt_account"
    __table_args__ = (Index("idx_account_tenant_status", "tenant_id", "status"),)
    __repr_attrs__ = ("id", "tenant_id", "platform_uid", "status", "token_version")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    platform_uid: Mapped[str] = mapped_column(String(64))
    nickname: Mapped[Optional[str]] = mapped_column(String(255))
    avatar_url: Mapped[Optional[str]] = mapped_column(String(1024))
    access_token: Mapped[Optional[str]] = mapped_column(Text)
    refresh_token: Mapped[Optional[str]] = mapped_column(Text)
    token_expires_at: Mapped[Optional[int]] = mapped_column(Integer)
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status: Mapped[str] = mapped_column(String(20), default="unknown", server_default="unknown")
    last_check_time: Mapped[Optional[int]] = mapped_column(Integer)
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)
    delete_time: Mapped[Optional[int]] = mapped_column(Integer)


class FriendRequestLog(Base):
    """One row per friend request sent; feeds the per-account daily cap."""

    __tablename__ = "la_friend_request_log"
    __table_args__ = (
        Index("idx_frl_account_day", "account_id", "day"),
        Index("uq_frl_task_account", "task_id", "account_id", unique=True),
    )
    __repr_attrs__ = ("id", "account_id", "friend_uid", "day")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(Integer)
    friend_uid: Mapped[str] = mapped_column(String(64))
    day: Mapped[int] = mapped_column(Integer)  # yyyymmdd
    create_time: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[Optional[int]] = mapped_column(Integer)  # the add_friend batch that sent it


class IpfsPin(Base):
    """A pin of a tenant's IPFS node as pin_sync last saw it; removal is a status, not a delete."""

    __tablename__ = "la_ipfs_pin"
    __table_args__ = (
        UniqueConstraint("tenant_id", "cid", name="uq_pin_tenant_cid"),
        Index("idx_pin_tenant_status", "tenant_id", "status"),
    )
    __repr_attrs__ = ("id", "tenant_id", "cid", "status")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    cid: Mapped[str] = mapped_column(String(128))
    pin_type: Mapped[str] = mapped_column(String(20), default="recursive", server_default="recursive")
    size: Mapped[Optional[int]] = mapped_column(BigInteger)  # CumulativeSize of the DAG, bytes
    status: Mapped[str] = mapped_column(String(20), default="present", server_default="present")
    first_seen: Mapped[int] = mapped_column(Integer)
    last_seen: Mapped[int] = mapped_column(Integer)
    removed_time: Mapped[Optional[int]] = mapped_column(Integer)
    last_task_id: Mapped[Optional[int]] = mapped_column(Integer)  # the pin_sync batch that last saw it
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)


class BatchTemplate(Base):
    """A batch template the admin panel saves: a named, scheduled set of parameters of a type.

    The panel writes the template columns; the maintenance run writes ``sync_*`` and
    ``prefect_*`` when it mirrors the row into a schedule of the type's deployment.
    """

    __tablename__ = "la_batch_template"
    __table_args__ = (Index("idx_template_tenant", "tenant_id", "task_type"),)
    __repr_attrs__ = ("id", "tenant_id", "task_type", "name", "sync_status")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    task_type: Mapped[str] = mapped_column(String(50))
    task_data: Mapped[Optional[str]] = mapped_column(Text)
    cron: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    enabled: Mapped[int] = mapped_column(SmallInteger, default=1, server_default="1")
    create_admin_id: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sync_status: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    sync_error: Mapped[Optional[str]] = mapped_column(String(500))
    sync_time: Mapped[Optional[int]] = mapped_column(Integer)
    sync_digest: Mapped[Optional[str]] = mapped_column(String(64))
    prefect_deployment_id: Mapped[Optional[str]] = mapped_column(String(36))
    prefect_schedule_id: Mapped[Optional[str]] = mapped_column(String(36))
    create_time: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[int] = mapped_column(Integer)
    delete_time: Mapped[Optional[int]] = mapped_column(Integer)


def columns_of(model: type[Base]) -> list[str]:
    """Column names of a model, in declaration order (used by tests)."""
    return [c.name for c in model.__table__.columns]


