"""The roster of live workers (`Keys.workers`): each worker beats (Redis time) every few
seconds; one not heard from within the TTL is dropped by the next beat of any other."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from .keys import Keys
from .scripts import load_scripts


class Roster:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._beat = load_scripts(redis, ("roster",))["roster"]

    async def beat(self, worker_id: str, ttl_seconds: float) -> list[str]:
        """Note `worker_id` alive now; the live workers (safe to repeat)."""
        live = await self._beat(keys=[self.keys.workers], args=[worker_id, int(ttl_seconds * 1000)])
        return cast(list[str], live)

    async def leave(self, worker_id: str) -> None:
        await self.redis.zrem(self.keys.workers, worker_id)
