"""The (tenant, type) limits as Prefect global concurrency limits, followed by running batches.

Each key has a global concurrency limit ``batch:<tenant>:<type>``, created on first use with
the configured default (``Settings.concurrency_for``). Operators see it on the UI's
Concurrency page and change it there or with ``prefect gcl update``. A running batch never
asks Prefect per item: it reads the limit at start and every ``limit_poll_s``, and resizes
its in-process limiter (``batchlib.limiter``), which every item takes before its platform call:

- a lower limit: the items in flight above it finish, no new ones start until below it;
- an inactive limit (or a limit of 0): no new calls, the batch waits (heartbeat, mirror and
  cancellation carry on);
- the Prefect API unreachable or failing at start: the configured default, logged once;
  never unlimited. Later failures keep the last value read.

On each poll, when it changed, the batch's in-flight count is written to the limit's
``active_slots``, so the Concurrency page shows the slots in use (one PATCH per poll at
most; see docs/concurrency.md for why not leases).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from batchcore.settings import MAX_CONCURRENCY, Settings
from batchlib.limiter import ResizableLimiter

__all__ = ["LimitFollower", "LimitSetting", "limit_name", "read_or_create"]


def limit_name(tenant_id: int, task_type: str) -> str:
    return f"batch:{tenant_id}:{task_type}"


@dataclass(frozen=True, slots=True)
class LimitSetting:
    limit: int
    active: bool

    @property
    def slots(self) -> int:
        """Platform calls allowed in flight: 0 pauses the batch."""
        return min(self.limit, MAX_CONCURRENCY) if self.active else 0

    def describe(self) -> str:
        if not self.active:
            return f"{self.limit} (inactive: paused)"
        return f"{self.limit}" + (f" (capped at {MAX_CONCURRENCY})" if self.limit > MAX_CONCURRENCY else "")


async def read_or_create(name: str, default: int) -> LimitSetting:
    """The limit ``name``; created with ``default`` slots when it does not exist yet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=default))
            except ObjectAlreadyExists:  # created by another run meanwhile
                pass
            found = await client.read_global_concurrency_limit_by_name(name)
    return LimitSetting(int(found.limit), bool(found.active))


async def _publish_in_use(name: str, in_use: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    async with get_client() as client:
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=in_use))


class LimitFollower:
    """Keeps one batch's limiter at the value of its global concurrency limit::

        follower = LimitFollower(tenant_id, task_type, settings, logger)
        await follower.start()    # limiter sized from Prefect (or the default); polling from now on
        ...                       # items take follower.limiter
        await follower.close()    # polling stopped, slots in use back to 0
    """

    def __init__(
        self, tenant_id: int, task_type: str, settings: Settings, logger: logging.Logger | logging.LoggerAdapter
    ) -> None:
        self.name = limit_name(tenant_id, task_type)
        self.default = settings.concurrency_for(tenant_id, task_type)
        self.limiter = ResizableLimiter(self.default)
        self.setting: LimitSetting | None = None  # the last value read from Prefect
        self._poll_s = settings.limit_poll_s
        self._timeout_s = settings.limit_api_timeout_s
        self._log = logger
        self._failing = False
        self._published: int | None = None  # None: unknown (a killed run may have left a figure)
        self._closing = asyncio.Event()
        self._poller: asyncio.Task | None = None

    async def start(self) -> int:
        """Size the limiter from Prefect (or the configured default), start polling; return the size."""
        await self._refresh()
        if self.setting is None:
            self._log.warning(
                "concurrency limit %s: Prefect API unavailable, using the configured default of %s",
                self.name, self.default,
            )
        self._poller = asyncio.create_task(self._poll())
        return self.limiter.size

    async def _poll(self) -> None:
        """Re-read the limit and publish the slots in use every ``limit_poll_s`` until closed."""
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), self._poll_s)
                return
            except TimeoutError:
                pass
            await self._refresh()
            await self._publish()

    async def close(self) -> None:
        """The batch is done: stop polling (after the step under way, so no late write lands
        after ours), then its slots in use back to 0 (best effort)."""
        self._closing.set()
        if self._poller is not None:
            try:
                await self._poller
            except BaseException:
                self._poller.cancel()
                raise
        if self._published != 0:
            await self._publish(0)

    async def _refresh(self) -> None:
        try:
            setting = await asyncio.wait_for(read_or_create(self.name, self.default), self._timeout_s)
        except Exception as exc:  # unreachable, timed out, refused: keep the size we have
            if not self._failing and self.setting is not None:
                self._log.warning("concurrency limit %s: cannot read it (%s), keeping %s",
                                  self.name, _why(exc), self.limiter.size)
            self._failing = True
            return
        if self._failing:
            self._log.info("concurrency limit %s: the Prefect API answers again", self.name)
        self._failing = False
        if setting != self.setting:
            if self.setting is not None or setting.slots != self.default:
                self._log.info("concurrency limit %s: %s", self.name, setting.describe())
            self.setting = setting
            self.limiter.resize(setting.slots)

    async def _publish(self, in_use: int | None = None) -> None:
        in_use = self.limiter.in_use if in_use is None else in_use
        if in_use == self._published or self.setting is None:
            return
        self._published = None  # unknown until the server confirms
        try:
            await asyncio.wait_for(_publish_in_use(self.name, in_use), self._timeout_s)
        except Exception:  # only the UI's figure is late; the next poll tries again
            return
        self._published = in_use


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"[:200]
