"""Leased schedules: a Redis ZSET of due items that workers claim under a lease.

The poller's schedule and the dispatcher's outbox are both one: an item's score is when it is
due, or its lease expiry while claimed. A claim gives each item the caller's fencing token (kept
in a hash beside the ZSET); every later write of that item checks the token, so a worker whose
lease passed to another changes nothing. Extending a lease moves only its expiry, never the
token, so an extension cannot race a write made with the token. A refused write is either a
lease lost (another worker's claim took the item) or an item that ended while held (its watch
was cancelled, or deleted): `LeasedQueue.ended` tells which (fence.lua).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from ..domain import WatchDoc
from .codec import unpack
from .keys import Keys, QueueKind
from .replication import Replication
from .scripts import ScriptCall, load_scripts, run_scripts, text


@dataclass(frozen=True, slots=True)
class Claimed:
    id: str
    token: str
    doc: WatchDoc


@dataclass(frozen=True, slots=True)
class Claim:
    now_ms: int
    next_due_ms: int | None
    watches: list[Claimed]


class LeasedQueue:
    """One leased schedule (the poller's or the outbox), in every partition: `claim` from one
    partition, `extend` and `release` items of any (claim.lua, extend.lua).

    A claim of the outbox waits for replicas (`replication`) before a webhook is sent under it:
    a lease lost in a failover would let a second dispatcher send the same webhook at once."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        kind: QueueKind,
        replication: Replication | None = None,
    ) -> None:
        self.redis, self.keys, self.kind = redis, keys, kind
        self.replication = replication or Replication(redis)
        scripts = load_scripts(redis, ("claim", "extend", "fence"))
        self._claim, self._extend = scripts["claim"], scripts["extend"]
        self._fence = scripts["fence"]

    @property
    def partitions(self) -> int:
        return self.keys.partitions

    async def claim(
        self,
        limit: int,
        lease_seconds: float,
        token: str,
        lost_token: str | None = None,
        partition: int = 0,
    ) -> Claim:
        """Lease up to `limit` due items of `partition` with `token`, and read their documents
        (a second round trip, same slot). `lost_token`: a claim whose reply never arrived (its
        items are made due again first)."""
        part = self.keys.parts[partition]
        reply = await self.replication.run(
            self._claim,
            list(part.queue(self.kind)),
            [limit, int(lease_seconds * 1000), token, lost_token or ""],
            durable=self.kind == "outbox",
        )
        now, next_due, ids = int(reply[0]), int(reply[1]), cast(list[str], reply[2:])
        raws = await self.redis.mget([part.watch(i) for i in ids]) if ids else []
        found = list(zip(ids, raws, strict=True))
        watches = [Claimed(i, token, unpack(raw)) for i, raw in found if raw]
        gone = [Claimed(i, token, cast(WatchDoc, {})) for i, raw in found if not raw]
        if gone:  # deleted meanwhile (retention): off the schedule, under our lease
            await self._call_extend(gone, 0, "drop")
        return Claim(now, next_due if next_due >= 0 else None, watches)

    async def heads(self, partitions: list[int]) -> list[float | None]:
        """When the first item of each partition's schedule is due, or its lease expires (ms;
        None for an empty one): one pipelined round trip of cheap reads."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for number in partitions:
                pipe.zrange(self.keys.parts[number].queue(self.kind)[0], 0, 0, withscores=True)
            replies = await pipe.execute()
        return [float(reply[0][1]) if reply else None for reply in replies]

    async def extend(self, items: list[Claimed], lease_seconds: float) -> list[bool]:
        """Extend the leases still held, in one round trip; False for each one lost."""
        return await self._call_extend(items, lease_seconds, "extend")

    async def release(self, items: list[Claimed], delay_seconds: float = 0.0) -> None:
        """Give leases back: the items are due again after `delay_seconds`, for any worker."""
        await self._call_extend(items, delay_seconds, "release")

    async def ended(self, claimed: Claimed) -> bool:
        """After the fence refused a write of `claimed` (or its lease was found gone): True when
        its watch ended meanwhile with no worker holding it (cancelled, or deleted), False when
        another worker's claim took it (a lease lost)."""
        part = self.keys.of(claimed.id)
        keys = [part.queue(self.kind)[1], part.watch(claimed.id)]
        return text(await self._fence(keys=keys, args=[claimed.id, claimed.token])) == "ended"

    async def _call_extend(self, items: list[Claimed], seconds: float, how: str) -> list[bool]:
        """One extend.lua call per partition of `items`, all in one pipeline."""
        if not items:
            return []
        by_partition = self.keys.group(claimed.id for claimed in items)
        calls: list[ScriptCall] = []
        for part, indexes in by_partition.items():
            args: list[Any] = [int(seconds * 1000), how]
            for index in indexes:
                args += [items[index].id, items[index].token]
            calls.append((self._extend, list(part.queue(self.kind)), args))
        kept = [False] * len(items)
        results = await run_scripts(self.redis, calls)
        for indexes, flags in zip(by_partition.values(), results, strict=True):
            for index, flag in zip(indexes, flags, strict=True):
                kept[index] = bool(flag)
        return kept
