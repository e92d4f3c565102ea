"""Slots of one limit shared by batches in many processes: blocks leased in Redis, split fairly.

A *pool* is a limit that several running batches draw on: the platform-wide cap (all
tenants, ``batch:platform``) or a tenant's total (all its types, ``batch:<tenant>``). Each
batch is a *member* of the pools it draws on and holds a *block* of their slots: the number
of calls it may have in flight. Nothing is asked per item; a member renews its blocks on a
slow heartbeat (``BATCH_SHARE_HEARTBEAT_S``) and its in-process limiter is resized to the
smallest of them (``tasks/limits.py``).

One Lua script does a renewal atomically, for all of a member's pools at once:

- members whose lease ran out (a killed process, ``BATCH_SHARE_LEASE_S``) are dropped, so
  their slots come back;
- the pool's slots are split max-min fairly: first between *groups* (the tenants, for the
  platform cap; a tenant's pool is one group), then inside a group between its members.
  Nobody gets more than it asks for (its own limit C); what one does not use goes to the
  others: a tenant alone may use the whole cap, ten tenants under a cap of 200 get 20 each;
- a member is granted its fair share, but never more than the slots the others leave free
  now: a member that must shrink keeps holding its old block until it reports, on its next
  renewal, that it has shrunk and the calls above its new block are gone. The sum of what
  members may have in flight never exceeds the cap; a newcomer reaches its share within
  about two heartbeats of the others.

The members of a pool live in one Redis hash, ``<prefix>share:<pool>``, member ->
``group|demand|held|in_use|lease_end_ms``; the hash expires when nobody renews it.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Grant", "Pool", "SharedSlots", "member_id"]

_RENEW = """
local function fill(cap, names, demand)
  -- max-min fair integer split of cap: ascending demand, each takes at most an equal part of what is left
  table.sort(names, function(a, b)
    if demand[a] ~= demand[b] then return demand[a] < demand[b] end
    return a < b
  end)
  local alloc, left, n = {}, cap, #names
  for i, name in ipairs(names) do
    local give = math.min(demand[name], math.floor(left / (n - i + 1)))
    alloc[name] = give
    left = left - give
  end
  return alloc
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, lease, demand = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local in_use, holding = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for p = 1, #KEYS do
  local key, cap, group = KEYS[p], tonumber(ARGV[4 + 2 * p]), ARGV[5 + 2 * p]
  local raw = redis.call('HGETALL', key)
  local members, names = {}, {}
  for i = 1, #raw, 2 do
    local g, d, h, u, e = string.match(raw[i + 1], '^(.*)|(%d+)|(%d+)|(%d+)|(%d+)$')
    if raw[i] ~= me then
      if g == nil or tonumber(e) <= now then
        redis.call('HDEL', key, raw[i])
      else
        members[raw[i]] = {g, tonumber(d), tonumber(h), tonumber(u)}
        names[#names + 1] = raw[i]
      end
    end
  end
  members[me] = {group, demand, 0, in_use}
  names[#names + 1] = me
  local gdemand, gnames = {}, {}
  for _, n in ipairs(names) do
    local g = members[n][1]
    if gdemand[g] == nil then gdemand[g] = 0; gnames[#gnames + 1] = g end
    gdemand[g] = gdemand[g] + members[n][2]
  end
  local ngroups = #gnames
  local galloc = fill(cap, gnames, gdemand)
  local mine, mdemand = {}, {}
  for _, n in ipairs(names) do
    if members[n][1] == group then mine[#mine + 1] = n; mdemand[n] = members[n][2] end
  end
  local target = fill(galloc[group], mine, mdemand)[me]
  local others, used = 0, in_use
  for _, n in ipairs(names) do
    if n ~= me then others = others + members[n][3]; used = used + members[n][4] end
  end
  local grant = math.max(0, math.min(target, cap - others))
  local held = math.max(grant, holding)
  redis.call('HSET', key, me, group .. '|' .. demand .. '|' .. held .. '|' .. in_use .. '|' .. (now + lease))
  redis.call('PEXPIRE', key, 2 * lease)
  table.sort(names)
  out[#out + 1] = {grant, target, used, #names, ngroups, names[1] == me and 1 or 0}
  demand = math.min(demand, target)
end
return out
"""


def member_id(label: str) -> str:
    """A name no other batch anywhere uses: ``<label>@<host>:<pid>:<random>``."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Pool:
    """A limit shared by batches: its Redis name, its slots now, and the caller's group in it."""

    name: str  # "platform", "tenant:7"
    cap: int  # 0: nobody gets a slot (a paused limit)
    group: str  # the unit of fairness the caller belongs to: its tenant, or itself


@dataclass(frozen=True, slots=True)
class Grant:
    slots: int  # the caller's block: calls it may have in flight from now on
    share: int  # its fair share: what it will hold once the others have shrunk
    in_use: int  # calls in flight in the whole pool, as last reported by its members
    members: int
    groups: int  # active tenants, for the platform pool
    publisher: bool  # the caller is the member that shows ``in_use`` to operators


class SharedSlots:
    """One batch's membership in the pools it draws on::

        shared = SharedSlots(redis_client, "batch:", member_id("7:account_check"), lease_s=10)
        grants = await shared.renew([Pool("tenant:7", 80, ""), Pool("platform", 200, "7")],
                                    demand=50, in_use=12, holding=50)
        ...                              # again every heartbeat
        await shared.leave()             # the slots are free for the others at once
    """

    def __init__(self, client: redis.asyncio.Redis, prefix: str, member: str, *, lease_s: float) -> None:
        self._client = client
        self._prefix = prefix
        self.member = member
        self._lease_ms = max(1, int(lease_s * 1000))
        self._script = client.register_script(_RENEW)
        self._joined: set[str] = set()

    def key(self, pool: str) -> str:
        return f"{self._prefix}share:{pool}"

    async def renew(self, pools: list[Pool], *, demand: int, in_use: int, holding: int) -> list[Grant]:
        """Ask for up to ``demand`` slots in every pool, in order (the demand in a pool is at
        most the fair share in the one before it). ``in_use``: the calls in flight now, shown
        to operators; ``holding``: the most the caller may have in flight until it has applied
        the answer (its limiter's size, or more while calls above a smaller size drain): the
        slots the others cannot have yet."""
        if not pools:
            return []
        argv: list[object] = [self.member, self._lease_ms, max(0, demand), max(0, in_use), max(0, holding)]
        for pool in pools:
            argv += [max(0, pool.cap), pool.group]
        keys = [self.key(p.name) for p in pools]
        rows = await self._script(keys=keys, args=argv)
        self._joined.update(keys)
        return [Grant(int(s), int(f), int(u), int(m), int(g), bool(p)) for s, f, u, m, g, p in rows]

    async def leave(self, pools: list[str] | None = None) -> None:
        """Give back every block held (or those of ``pools``)."""
        keys = [self.key(p) for p in pools] if pools is not None else sorted(self._joined)
        if keys:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hdel(key, self.member)
                await pipe.execute()
        self._joined.difference_update(keys)
