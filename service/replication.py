"""Writes that promise something to a caller (a `201`, a webhook marked delivered) wait for a
replica's acknowledgement: Redis replicates asynchronously, and a master lost before its
replica had the write would take the promise with it.

`WAIT n timeout` covers the writes made before it *on the same connection*, so it goes in one
pipeline with the script call (on a cluster: to the node of the call's slot). A write that
fewer replicas acknowledged in time is still answered (it is on the master, and usually on its
replica a moment later); it is logged and counted (`vtwatch_replica_wait_short_total`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .metrics import REPLICA_WAIT, REPLICA_WAIT_SHORT

logger = logging.getLogger(__name__)


class Replication:
    def __init__(self, redis: aioredis.Redis, replicas: int = 0, timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    async def run(
        self, script: AsyncScript, keys: list[str], args: list[Any], *, durable: bool
    ) -> Any:
        """Run `script`; when `durable`, wait for the configured replicas to have the write."""
        if not durable or self.replicas == 0:
            return await script(keys=keys, args=args)
        for _ in range(2):  # once more after NOSCRIPT (it did not run)
            started = time.perf_counter()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                if isinstance(self.redis, RedisCluster):
                    node = self.redis.get_node_from_key(keys[0])
                    pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
                else:
                    pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
                result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError):
                await self.redis.script_load(script.script)
                continue
            if isinstance(result, Exception):
                raise result
            REPLICA_WAIT.observe(time.perf_counter() - started)
            if isinstance(acked, Exception) or int(acked) < self.replicas:
                REPLICA_WAIT_SHORT.inc()
                logger.warning(
                    "a promised write reached %s of %d replicas within %d ms",
                    acked,
                    self.replicas,
                    self.timeout_ms,
                )
            return result
        raise AssertionError("NOSCRIPT twice in a row")
