"""Writes that promise something to a caller (a `201`, a webhook marked delivered) wait for a
replica's acknowledgement: Redis replicates asynchronously, and a master lost before its
replica had the write would take the promise with it.

`WAIT n timeout` covers the writes made before it *on the same connection*, so it goes in one
pipeline with the script call (on a cluster: to the node of the call's slot). A write that
fewer replicas acknowledged in time is still answered (it is on the master, and usually on its
replica a moment later); it is logged and counted (`vtwatch_replica_wait_short_total`).

On a cluster the pipeline does not follow redirects itself: redis-py would send a redirected
script again on a connection of its own, to another node, and the WAIT would cover nothing
(a slot that moved or is moving). A redirect means the script did not run, so it is followed
here, the WAIT with it: `MOVED`, after reading the slot map again; `ASK`, to the node named,
after `ASKING` on the same connection; `TRYAGAIN` (a multi-key call in a slot being migrated),
after a pause. Still redirected after `REDIRECTS` tries, the last error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from .metrics import REPLICA_WAIT, REPLICA_WAIT_SHORT

logger = logging.getLogger(__name__)
REDIRECTS = 16  # as redis-py's own limit (RedisClusterRequestTTL)
TRYAGAIN_PAUSE = 0.05


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
        if isinstance(self.redis, RedisCluster):
            return await self._run_on_cluster(script, keys, args)
        for _ in range(2):  # once more after NOSCRIPT (it did not run)
            started = time.perf_counter()
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
                result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError):
                await self.redis.script_load(script.script)
                continue
            return self._answered(result, acked, started)
        raise AssertionError("NOSCRIPT twice in a row")

    async def _run_on_cluster(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        cluster = cast(RedisCluster, self.redis)
        node = cluster.get_node_from_key(keys[0])
        asking = reloaded = False
        error: Exception | None = None
        for _ in range(REDIRECTS):
            started = time.perf_counter()
            async with cluster.pipeline(transaction=False) as pipe:
                if asking:
                    pipe.execute_command("ASKING", target_nodes=node)
                pipe.execute_command(
                    "EVALSHA", script.sha, len(keys), *keys, *args, target_nodes=node
                )
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
                *_, result, acked = await pipe.execute(
                    raise_on_error=False, allow_redirections=False
                )
            if isinstance(result, NoScriptError) and not reloaded:  # to the same node again
                await cluster.script_load(script.script)
                reloaded = True
            elif isinstance(result, MovedError | AskError):
                if isinstance(result, MovedError):
                    await cluster.nodes_manager.initialize()  # the slot map, for the next calls
                node = await self._named(cluster, result, node)
                asking = isinstance(result, AskError)
            elif isinstance(result, TryAgainError):
                await asyncio.sleep(TRYAGAIN_PAUSE)
                node, asking = cluster.get_node_from_key(keys[0]), False
            else:
                return self._answered(result, acked, started)
            error = result
        assert error is not None
        raise error

    @staticmethod
    async def _named(
        cluster: RedisCluster, redirect: MovedError | AskError, answered: ClusterNode | None
    ) -> ClusterNode:
        """The node a redirect names (an empty host: the one of the node that answered)."""
        host = redirect.host or (answered.host if answered else "")
        named = cluster.get_node(host=host, port=redirect.port)
        if named is None:  # a node the client has not seen yet
            await cluster.nodes_manager.initialize()
            named = cluster.get_node(host=host, port=redirect.port)
        if named is None:
            raise redirect
        return named

    def _answered(self, result: Any, acked: Any, started: float) -> Any:
        """The script's result (its error raised), the WAIT's reply observed."""
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
