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
here, the WAIT with it: `MOVED`, to the node named; `ASK`, to the node named, after `ASKING` on
the same connection; `TRYAGAIN` (a multi-key call in a slot being migrated), to the same node
after a pause. Still redirected after `REDIRECTS` tries, the last error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.cluster import PRIMARY
from redis.commands.core import AsyncScript
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from ..metrics import REPLICA_WAIT, REPLICA_WAIT_SHORT

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
        # On a cluster, the node of the call's slot (a primary: never None); else None.
        node = (
            cast(ClusterNode, self.redis.get_node_from_key(keys[0]))
            if isinstance(self.redis, RedisCluster)
            else None
        )
        asking = False
        loaded: set[str] = set()  # nodes this call loaded the script on after a NOSCRIPT
        for _ in range(REDIRECTS):
            started = time.perf_counter()
            result, acked = await self._send(script, keys, args, node, asking)
            name = node.name if node is not None else ""
            if isinstance(result, NoScriptError) and name not in loaded:  # it did not run
                # to this node only (a shard in a failover must not fail a healthy one's write)
                load = ("SCRIPT LOAD", script.script)
                await self.redis.execute_command(*load, **_on(node))  # type: ignore[no-untyped-call]
                loaded.add(name)
            elif node is not None and isinstance(result, AskError):
                # MOVED too (a MovedError is an AskError). The client's own map is left to its
                # next command's MOVED (a patch of one slot, no CLUSTER SLOTS per redirect).
                node = self._named(cast(RedisCluster, self.redis), result, node)
                asking = not isinstance(result, MovedError)
            elif isinstance(result, TryAgainError):
                await asyncio.sleep(TRYAGAIN_PAUSE)
            else:
                return self._answered(result, acked, started)
        logger.warning(
            "a promised write was still redirected after %d tries: %s", REDIRECTS, result
        )
        raise result

    async def _send(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[Any],
        node: ClusterNode | None,
        asking: bool,
    ) -> tuple[Any, Any]:
        """The script and its WAIT in one pipeline, on one connection (to `node` on a cluster,
        redirects returned rather than followed); their replies, errors included."""
        target = _on(node)
        async with self.redis.pipeline(transaction=False) as pipe:
            if asking:
                pipe.execute_command("ASKING", **target)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, **target)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms, **target)
            # On a cluster the redirects come back as replies, to be followed with the WAIT.
            replies = await pipe.execute(raise_on_error=False, **_redirects(node))
        return replies[-2], replies[-1]

    @staticmethod
    def _named(cluster: RedisCluster, redirect: AskError, answered: ClusterNode) -> ClusterNode:
        """The node a redirect names (an empty host: the one of the node that answered); a node
        the client has not seen (a new master holds no slot yet, so the slot map omits it) is
        added to its nodes, as redis-py adds the target of a MOVED."""
        host = redirect.host or answered.host
        named = cluster.get_node(host=host, port=redirect.port)
        if named is None:
            manager = cluster.nodes_manager
            named = ClusterNode(host, redirect.port, PRIMARY, **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {named.name: named})
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


def _redirects(node: ClusterNode | None) -> dict[str, bool]:
    return {} if node is None else {"allow_redirections": False}


def _on(node: ClusterNode | None) -> dict[str, Any]:
    """A command's routing: to `node` on a cluster; nothing to say on one Redis."""
    return {} if node is None else {"target_nodes": node}
