"""Redis memory per pending watch: `used_memory` before and after registering watches (default
policy, small metadata) in a fresh namespace, deleted afterwards; and `MEMORY USAGE` per key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from bench._fixtures import TENANT, delete_namespace, register_all, spec_for
from service.models import Policy
from service.store import Store

MEMORY_URL = "http://127.0.0.1:5000/jobs/j{}/status"
MEMORY_METADATA = {"video": "abc.mp4"}


@dataclass(slots=True)
class Memory:
    watches: int
    used_before: int
    used_after: int
    bytes_per_watch: float
    key_bytes: dict[str, float]  # MEMORY USAGE: one doc, and the ZSETs per member


async def used_memory(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def measure_memory(redis: aioredis.Redis, watches: int) -> Memory:
    store = Store(redis, namespace=f"bench-mem-{secrets.token_hex(4)}")
    base = spec_for(MEMORY_URL.format(1), Policy(), MEMORY_METADATA)
    try:
        before = await used_memory(redis)
        specs = ({**base, "status_url": MEMORY_URL.format(12_345 + i)} for i in range(watches))
        await register_all(store, specs, deadline=Policy().max_wait_time)
        after = await used_memory(redis)
        k = store.keys
        sample = cast(list[str], await redis.zrange(k.schedule, 0, 0))[0]
        keys = {
            "watch doc (STRING)": (k.watch(sample), 1),
            "schedule ZSET /watch": (k.schedule, watches),
            "tenant index ZSET /watch": (k.index(TENANT), watches),
            "pending index ZSET /watch": (k.index(TENANT, "pending"), watches),
        }
        usage = {}
        for label, (key, n) in keys.items():
            used = await redis.memory_usage(key, samples=0)
            usage[label] = (used or 0) / n
    finally:
        await delete_namespace(store)
    return Memory(watches, before, after, (after - before) / watches, usage)
