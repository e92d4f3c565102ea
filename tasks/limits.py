"""The batch limits as Prefect global concurrency limits, followed by running batches.

Three limits bound a batch's platform calls in flight; the smallest wins:

- ``batch:<tenant>:<type>``: the key's own limit C, created on first use with the configured
  default (``Settings.concurrency_for``);
- ``batch:<tenant>`` (optional): the tenant's total over all its types, created on first use
  when ``BATCH_TENANT_MAX_IN_FLIGHT`` names the tenant, or by an operator;
- ``batch:platform`` (optional): all tenants together, created on first use when
  ``BATCH_PLATFORM_MAX_IN_FLIGHT`` is set, or by an operator. Only batch types that call the
  platform draw on it.

Operators see them on the UI's Concurrency page and change them there or with
``prefect gcl update``. A running batch never asks Prefect per item: it reads its limits at
start and every ``limit_poll_s``, and resizes its in-process limiter (``batchlib.limiter``),
which every item takes before its platform call:

- a lower limit: the items in flight above it finish, no new ones start until below it;
- an inactive limit (or a limit of 0): no new calls, the batch waits (heartbeat, mirror and
  cancellation carry on);
- the Prefect API unreachable or failing at start: the configured defaults, logged once;
  never unlimited. Later failures keep the last values read.

The two shared limits are split between the batches that draw on them through Redis
(``batchlib.fair_share``): every ``share_heartbeat_s`` the batch renews its block of slots
and reports its calls in flight; the platform cap is shared evenly by the active tenants.
With Redis unavailable each batch keeps to a per-process cap instead (logged once).

On each poll, when it changed, the batch's in-flight count is written to its key limit's
``active_slots``, and one batch per shared limit writes the total there, so the
Concurrency page shows the slots in use (one PATCH per poll at most per limit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from batchcore.settings import MAX_CONCURRENCY, Settings
from batchlib.fair_share import Grant, Pool, SharedSlots, member_id
from batchlib.limiter import ResizableLimiter

__all__ = [
    "PLATFORM_LIMIT", "LimitFollower", "LimitSetting", "limit_name", "read_or_create", "tenant_limit_name",
]

PLATFORM_LIMIT = "batch:platform"


def limit_name(tenant_id: int, task_type: str) -> str:
    return f"batch:{tenant_id}:{task_type}"


def tenant_limit_name(tenant_id: int) -> str:
    return f"batch:{tenant_id}"


@dataclass(frozen=True, slots=True)
class LimitSetting:
    limit: int
    active: bool

    @property
    def slots(self) -> int:
        """Platform calls allowed in flight: 0 pauses the batch."""
        return min(self.limit, MAX_CONCURRENCY) if self.active else 0

    @property
    def total(self) -> int:
        """A shared limit's slots (not capped at one key's maximum): 0 pauses."""
        return max(0, self.limit) if self.active else 0

    def describe(self) -> str:
        if not self.active:
            return f"{self.limit} (inactive: paused)"
        return f"{self.limit}" + (f" (capped at {MAX_CONCURRENCY})" if self.limit > MAX_CONCURRENCY else "")


async def _read(client, name: str, default: int | None) -> LimitSetting | None:
    """The limit ``name``; created with ``default`` slots when missing, None when missing without one."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        found = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        if default is None:
            return None
        try:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=default))
        except ObjectAlreadyExists:  # created by another run meanwhile
            pass
        found = await client.read_global_concurrency_limit_by_name(name)
    return LimitSetting(int(found.limit), bool(found.active))


async def read_or_create(name: str, default: int) -> LimitSetting:
    """The limit ``name``; created with ``default`` slots when it does not exist yet."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await _read(client, name, default)  # type: ignore[return-value]  # a default: never None


async def _read_all(wanted: list[tuple[str, int | None]]) -> list[LimitSetting | None]:
    """Several limits in one client, concurrently (one poll)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return list(await asyncio.gather(*(_read(client, name, default) for name, default in wanted)))


async def _publish_in_use(name: str, in_use: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    async with get_client() as client:
        await client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=in_use))


def _uses_platform(task_type: str) -> bool:
    from batchcore.errors import UnknownBatchType
    from batchlib.batch_types import get_batch_type

    try:
        return get_batch_type(task_type).uses_platform
    except UnknownBatchType:
        return True  # unknown here: count it against the cap rather than let it escape


class LimitFollower:
    """Keeps one batch's limiter at the value of its limits::

        follower = LimitFollower(tenant_id, task_type, settings, logger)
        await follower.start()    # limiter sized from Prefect and Redis (or the defaults); polling from now on
        ...                       # items take follower.limiter
        await follower.close()    # polling stopped, blocks given back, slots in use back to 0
    """

    def __init__(
        self, tenant_id: int, task_type: str, settings: Settings, logger: logging.Logger | logging.LoggerAdapter
    ) -> None:
        self.name = limit_name(tenant_id, task_type)
        self.tenant_name = tenant_limit_name(tenant_id)
        self.tenant_id = tenant_id
        self.default = settings.concurrency_for(tenant_id, task_type)
        self.tenant_default = settings.tenant_max_in_flight.get(tenant_id)
        self.platform_default = settings.platform_max_in_flight
        self.on_platform = _uses_platform(task_type)
        self.limiter = ResizableLimiter(self.default)
        self.elsewhere: Callable[[], int] = lambda: 0  # slots held outside the limiter (the batch's item processes)
        self.setting: LimitSetting | None = None  # the last value read from Prefect
        self.tenant_setting: LimitSetting | None = None  # None: no tenant total
        self.platform_setting: LimitSetting | None = None  # None: no platform cap
        self.grants: dict[str, Grant] = {}  # pool -> the last block granted by Redis
        self.sharing = False  # blocks come from Redis now (else: the per-process fallback)
        self._settings = settings
        self._poll_s = settings.limit_poll_s
        self._timeout_s = settings.limit_api_timeout_s
        self._log = logger
        self._read_once = False
        self._failing = False
        self._published: dict[str, int | None] = {self.name: None}  # None: unknown (a killed run may have left a figure)
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._shared: SharedSlots | None = None
        self._redis = None
        self._share_failing: bool | None = None  # None: not tried yet
        self._running = False  # items may take the limiter

    # -- the limits in effect -----------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Calls in flight under this limit: the limiter's holders and the item processes'."""
        return self.limiter.in_use + self.elsewhere()

    @property
    def own_slots(self) -> int:
        return self.setting.slots if self.setting is not None else self.default

    def _pools(self) -> list[tuple[str, Pool]]:
        """(Prefect limit, Redis pool) of the shared limits this batch draws on, tenant first."""
        pools = []
        if self.tenant_setting is not None:
            pools.append((self.tenant_name, Pool(f"tenant:{self.tenant_id}", self.tenant_setting.total, "")))
        if self.platform_setting is not None and self.on_platform:
            pools.append((PLATFORM_LIMIT, Pool("platform", self.platform_setting.total, str(self.tenant_id))))
        return pools

    def _fallback(self) -> int:
        """The per-process cap while the shared limits cannot be shared (no Redis)."""
        size = self.own_slots
        if self.tenant_setting is not None:
            size = min(size, self.tenant_setting.total)
        if self.platform_setting is not None and self.on_platform:
            fallback = self._settings.platform_fallback_in_flight
            size = min(size, self.platform_setting.total if fallback is None else fallback)
            if not self.platform_setting.active:
                size = 0
        return size

    def _resize(self) -> None:
        size = self.own_slots
        pools = self._pools()
        if pools and self.sharing:
            for limit, _ in pools:
                grant = self.grants.get(limit)
                size = min(size, grant.slots if grant is not None else 0)
        elif pools:
            size = self._fallback()
        if size != self.limiter.size:
            self.limiter.resize(size)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Size the limiter from Prefect and Redis (or the configured defaults), start polling;
        return the size."""
        await self._refresh()
        if not self._read_once:
            self._log.warning(
                "concurrency limit %s: Prefect API unavailable, using the configured default of %s",
                self.name, self.default,
            )
            if self.tenant_default is not None:
                self.tenant_setting = LimitSetting(self.tenant_default, True)
            if self.platform_default is not None:
                self.platform_setting = LimitSetting(self.platform_default, True)
        await self._share()
        self._resize()
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._heartbeat())]
        self._running = True
        return self.limiter.size

    async def _poll(self) -> None:
        """Re-read the limits and publish the slots in use every ``limit_poll_s`` until closed."""
        while not await self._wait(self._poll_s):
            before = self._pools()
            await self._refresh()
            if self._pools() != before:  # a shared limit changed: renew the blocks now, not at the next beat
                await self._share()
            self._resize()
            await self._publish_all()

    async def _heartbeat(self) -> None:
        """Renew the blocks of the shared limits every ``share_heartbeat_s`` until closed."""
        while not await self._wait(self._settings.share_heartbeat_s):
            await self._share()
            self._resize()

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when the follower is closing."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """The batch is done: stop polling (after the step under way, so no late write lands
        after ours), give back the blocks, then its slots in use back to 0 (best effort)."""
        self._closing.set()
        try:
            for task in self._tasks:
                await task
        except BaseException:
            for task in self._tasks:
                task.cancel()
            raise
        alone = [limit for limit, grant in self.grants.items() if grant.members <= 1]
        if self._shared is not None:
            try:
                await asyncio.wait_for(self._shared.leave(), self._timeout_s)
            except Exception:  # the lease runs out on its own
                pass
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:
                pass
        if self._published.get(self.name) != 0:
            await self._publish(self.name, 0)
        for limit in alone:  # we were its only batch: nobody else will show 0
            await self._publish(limit, 0)

    # -- Prefect --------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        wanted: list[tuple[str, int | None]] = [(self.name, self.default), (self.tenant_name, self.tenant_default)]
        if self.on_platform:
            wanted.append((PLATFORM_LIMIT, self.platform_default))
        try:
            found = await asyncio.wait_for(_read_all(wanted), self._timeout_s)
        except Exception as exc:  # unreachable, timed out, refused: keep the sizes we have
            if not self._failing and self._read_once:
                self._log.warning("concurrency limit %s: cannot read it (%s), keeping %s",
                                  self.name, _why(exc), self.limiter.size)
            self._failing = True
            return
        if self._failing:
            self._log.info("concurrency limit %s: the Prefect API answers again", self.name)
        self._failing = False
        first = not self._read_once
        self._read_once = True
        setting, tenant, platform = (found + [None])[:3]
        if setting is not None and setting != self.setting:
            if self.setting is not None or setting.slots != self.default:
                self._log.info("concurrency limit %s: %s", self.name, setting.describe())
            self.setting = setting
        for limit, old, new, default in (
            (self.tenant_name, self.tenant_setting, tenant, self.tenant_default),
            (PLATFORM_LIMIT, self.platform_setting, platform, self.platform_default),
        ):
            if new == old or (first and new in (None, LimitSetting(default or 0, True))):
                continue  # unchanged, or at start: absent or at the configured default
            self._log.info("concurrency limit %s: %s", limit, new.describe() if new else "none (deleted)")
        self.tenant_setting, self.platform_setting = tenant, platform

    async def _publish_all(self) -> None:
        await self._publish(self.name, self.in_use)
        for limit, _ in self._pools():
            grant = self.grants.get(limit)
            if grant is not None and grant.publisher and self.sharing:
                await self._publish(limit, grant.in_use)

    async def _publish(self, name: str, in_use: int) -> None:
        if in_use == self._published.get(name) or self.setting is None:
            return
        self._published[name] = None  # unknown until the server confirms
        try:
            await asyncio.wait_for(_publish_in_use(name, in_use), self._timeout_s)
        except Exception:  # only the UI's figure is late; the next poll tries again
            return
        self._published[name] = in_use

    # -- Redis ----------------------------------------------------------------------------------

    async def _share(self) -> None:
        """Renew this batch's blocks of the shared limits (when any applies)."""
        pools = self._pools()
        if not pools:
            if self.grants and self._shared is not None:  # the limits were deleted: give the blocks back
                try:
                    await asyncio.wait_for(self._shared.leave(), self._timeout_s)
                except Exception:
                    pass
                self.grants = {}
            return
        try:
            shared = self._shared or self._connect()
            got = await asyncio.wait_for(
                shared.renew(
                    [p for _, p in pools], demand=self.own_slots, in_use=self.in_use,
                    # what we may have in flight until we apply the answer: our limiter's size,
                    # or more while calls above a smaller size drain (nothing before items start)
                    holding=max(self.in_use, self.limiter.size if self._running else 0),
                ),
                self._timeout_s,
            )
        except Exception as exc:
            if self._share_failing is not True:
                self._log.warning(
                    "shared limits %s: Redis unavailable (%s), this batch keeps to a per-process cap of %s",
                    ", ".join(limit for limit, _ in pools), _why(exc), self._fallback(),
                )
            self._share_failing, self.sharing = True, False
            return
        if self._share_failing:
            self._log.info("shared limits: Redis answers again, blocks shared again")
        self._share_failing, self.sharing = False, True
        self.grants = {limit: grant for (limit, _), grant in zip(pools, got, strict=True)}

    def _connect(self) -> SharedSlots:
        if self._settings.redis_url is None:
            raise RuntimeError("no BATCH_REDIS_URL")
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(
            self._settings.redis_url.get_secret_value(), socket_connect_timeout=2, socket_timeout=2
        )
        label = self.name.removeprefix("batch:")
        self._shared = SharedSlots(
            self._redis, self._settings.redis_key_prefix, member_id(label), lease_s=self._settings.share_lease_s
        )
        return self._shared


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"[:200]
