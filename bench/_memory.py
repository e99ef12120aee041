"""Redis memory per pending watch: `used_memory` before and after registering watches (default
policy, small metadata) in a fresh namespace, deleted afterwards; and `MEMORY USAGE` per key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bench._fixtures import TENANT, delete_namespace, register_all, spec_for
from service.api.schemas import Policy
from service.store.watches import Store

MEMORY_URL = "http://127.0.0.1:5000/jobs/j{}/status"
MEMORY_METADATA = {"video": "abc.mp4"}


@dataclass(slots=True)
class Memory:
    watches: int
    used_before: int
    used_after: int
    bytes_per_watch: float
    key_bytes: dict[str, float]  # MEMORY USAGE: one doc, and the ZSETs per member


# Buffers that come and go with the traffic (clients', replicas', the AOF's, the replication
# backlog, which fills to its fixed size), not
# with what is stored: left out of the figure.
TRANSIENT = (
    "mem_clients_slaves",
    "mem_clients_normal",
    "mem_aof_buffer",
    "mem_replication_backlog",
)


async def used_memory(redis: aioredis.Redis) -> int:
    """`used_memory` less the transient buffers, of the Redis or summed over a cluster's
    masters."""
    if isinstance(redis, RedisCluster):
        info = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        nodes = list(info.values())
    else:
        nodes = [await redis.info("memory")]
    return sum(int(n["used_memory"]) - sum(int(n.get(f, 0)) for f in TRANSIENT) for n in nodes)


async def measure_memory(redis: aioredis.Redis, watches: int, partitions: int = 1) -> Memory:
    store = Store(redis, namespace=f"bench-mem-{secrets.token_hex(4)}", partitions=partitions)
    base = spec_for(MEMORY_URL.format(1), Policy(), MEMORY_METADATA)
    try:
        before = await used_memory(redis)
        specs = ({**base, "status_url": MEMORY_URL.format(12_345 + i)} for i in range(watches))
        await register_all(store, specs, deadline=Policy().max_wait_time)
        after = await used_memory(redis)
        k = store.keys.parts[0]
        sample = cast(list[str], await redis.zrange(k.schedule, 0, 0))[0]
        in_part = await redis.zcard(k.schedule)
        keys = {
            "watch doc (STRING)": (k.watch(sample), 1),
            "schedule ZSET /watch": (k.schedule, in_part),
            "tenant index ZSET /watch": (k.index(TENANT), in_part),
            "pending index ZSET /watch": (k.index(TENANT, "pending"), in_part),
        }
        usage = {}
        for label, (key, n) in keys.items():
            used = await redis.memory_usage(key, samples=0)
            usage[label] = (used or 0) / n
    finally:
        await delete_namespace(store)
    return Memory(watches, before, after, (after - before) / watches, usage)
