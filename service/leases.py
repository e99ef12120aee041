"""Leased schedules: a Redis ZSET of due items that workers claim under a lease.

The poller's schedule and the dispatcher's outbox are both one: an item's score is when it is
due, or its lease expiry while claimed. A claim gives each item the caller's fencing token (kept
in a hash beside the ZSET); every later write of that item checks the token, so a worker whose
lease passed to another changes nothing. Extending a lease moves only its expiry, never the
token, so an extension cannot race a write made with the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .domain import WatchDoc

# A script, its keys and its arguments: one EVALSHA of a pipeline (`run_scripts`).
ScriptCall = tuple[AsyncScript, list[str], list[Any]]


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


def load_scripts(
    redis: aioredis.Redis, names: tuple[str, ...], preludes: tuple[str, ...] = ("_prelude",)
) -> dict[str, AsyncScript]:
    """Register the named scripts of `lua/` once, each after `_prelude.lua` (shared helpers)
    and any other `preludes`; calls use EVALSHA (reloading if flushed)."""
    folder = resources.files("service") / "lua"
    prelude = "".join((folder / f"{name}.lua").read_text() for name in preludes)
    return {
        name: redis.register_script(prelude + (folder / f"{name}.lua").read_text())
        for name in names
    }


async def run_scripts(
    redis: aioredis.Redis, calls: Sequence[ScriptCall], *, raise_from: int | None = None
) -> list[Any]:
    """EVALSHA each call in one pipeline; scripts the server lost (a restart) are loaded and
    only those calls run again (NOSCRIPT means they did not run). An error of a call before
    index `raise_from` (default: any) is raised; later calls' errors are returned instead."""
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i][0] for i in missing}:
            await redis.script_load(script.script)
        # The calls run again keep their order: those that were before `raise_from` come first.
        again_raise_from = None if raise_from is None else sum(i < raise_from for i in missing)
        again = await run_scripts(redis, [calls[i] for i in missing], raise_from=again_raise_from)
        for i, result in zip(missing, again, strict=True):
            results[i] = result
    limit = len(results) if raise_from is None else raise_from
    for result in results[:limit]:
        if isinstance(result, Exception):
            raise result
    return results


async def server_time_ms(redis: aioredis.Redis) -> int:
    """Redis server time in milliseconds (what the scripts' `now_ms()` reads)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def decode(raw: str | bytes) -> Any:
    return orjson.loads(raw)


class LeasedQueue:
    """One leased schedule: `claim`, `extend` and `release` (claim.lua, extend.lua)."""

    def __init__(
        self, redis: aioredis.Redis, schedule: str, leases: str, watch_prefix: str
    ) -> None:
        self.schedule, self.leases, self.watch_prefix = schedule, leases, watch_prefix
        scripts = load_scripts(redis, ("claim", "extend"))
        self._claim, self._extend = scripts["claim"], scripts["extend"]

    async def claim(
        self, limit: int, lease_seconds: float, token: str, lost_token: str | None = None
    ) -> Claim:
        """Lease up to `limit` due items with `token`. `lost_token`: a claim whose reply never
        arrived (its items are made due again first)."""
        reply = await self._claim(
            keys=[self.schedule, self.leases],
            args=[self.watch_prefix, limit, int(lease_seconds * 1000), token, lost_token or ""],
        )
        now, next_due = int(reply[0]), int(reply[1])
        watches = [
            Claimed(reply[i], token, cast(WatchDoc, decode(reply[i + 1])))
            for i in range(2, len(reply), 2)
        ]
        return Claim(now, next_due if next_due >= 0 else None, watches)

    async def extend(self, items: list[Claimed], lease_seconds: float) -> list[bool]:
        """Extend the leases still held, in one call; False for each one lost."""
        return await self._call_extend(items, lease_seconds, "extend")

    async def release(self, items: list[Claimed], delay_seconds: float = 0.0) -> None:
        """Give leases back: the items are due again after `delay_seconds`, for any worker."""
        await self._call_extend(items, delay_seconds, "release")

    async def _call_extend(self, items: list[Claimed], seconds: float, how: str) -> list[bool]:
        if not items:
            return []
        args: list[str | int] = [int(seconds * 1000), how]
        for claimed in items:
            args += [claimed.id, claimed.token]
        kept = await self._extend(keys=[self.schedule, self.leases], args=args)
        return [bool(flag) for flag in kept]
