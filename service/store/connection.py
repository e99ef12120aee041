"""Connecting to Redis, to a Redis Cluster, or to the embedded in-memory store when no URL is
configured, and retrying what is safe to repeat.

redis-py's own retry is off: it would send again a command that timed out or lost its reply,
which may have run (a second claim, rotation or cancel). Commands that are safe to repeat (by
id or request id) go through `retry_idempotent`; the rest surface their error, and the caller
decides (the API answers 503, a worker loop backs off and tries again).

On a cluster (`VTW_REDIS_CLUSTER`), redirects are followed by the client: `MOVED` and `ASK`
(a slot that moved or is moving) and `TRYAGAIN` (a multi-key call during a migration) mean the
command did not run, so it is sent to the right node (the promised writes of `replication`
follow them themselves, their WAIT with them). `TRYAGAIN` is tried again for a moment only
(redis-py: 16 tries, about 0.4 s; a promised write: 16 tries 50 ms apart); a migration of the slot
still under way then is an error like a lost node, and nothing was written. A failover's
errors (`CLUSTERDOWN`, a lost connection, `READONLY`) are not retried blindly: they surface like
a lost single Redis, the client refreshes its slot map before its next command, and the callers
ride them out as above.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..settings import ConfigurationError, Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
EMBEDDED_WARNING = (
    "VTW_REDIS_URL is not set: using the EMBEDDED IN-MEMORY store. Nothing is durable and "
    "nothing is shared with other processes; set VTW_REDIS_URL for real use."
)
IDEMPOTENT_RETRIES = 2
IDEMPOTENT_RETRY_DELAY = 0.05


def connect(settings: Settings) -> aioredis.Redis:
    """A Redis client with a blocking pool (waits for a connection instead of failing), or a
    cluster client (one pool per node), typed as one Redis: every call the store makes names
    its keys, all in one slot, so a cluster answers it like one Redis."""
    if settings.redis_url is None:
        return embedded()
    if settings.redis_cluster:
        cluster = HealingCluster.from_url(
            settings.redis_url,
            max_connections=max(64, settings.worker_concurrency),
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=15,
            retry=Retry(NoBackoff(), retries=0),
        )
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max(16, settings.worker_concurrency // 4),
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry=Retry(NoBackoff(), retries=0),
    )
    return aioredis.Redis.from_pool(pool)  # its `aclose()` closes the pool's connections too


# A node that stopped answering, or a cluster in a failover: the slot map must be read again.
NODE_LOST = (RedisConnectionError, RedisTimeoutError, ClusterDownError)


class HealingPipeline(ClusterPipeline):
    """A cluster pipeline that, when a node is lost, has the client read the slot map again
    before its next command (redis-py does so for single commands, not for pipelines, so a
    client that only pipelines would keep calling a dead master). Nothing is re-sent."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            results = await super().execute(raise_on_error, allow_redirections)
        except NODE_LOST:
            await self.cluster_client.aclose()
            raise
        if any(isinstance(result, NODE_LOST) for result in results):
            await self.cluster_client.aclose()
        return results


class HealingCluster(RedisCluster):
    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        """Read the slot map; a node that is no cluster's is a configuration error, named."""
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if "cluster mode is not enabled" not in str(exc).lower():
                raise
            raise ConfigurationError(
                "VTW_REDIS_CLUSTER is true, but VTW_REDIS_URL names a Redis without cluster "
                "mode (e.g. VTW_REDIS_CLUSTER=false, or a URL of a cluster's node)"
            ) from None

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:
            raise ValueError("shard_hint is not supported on a cluster")
        return HealingPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's


async def check_mode(settings: Settings) -> None:
    """At start-up, before anything is served: `ConfigurationError` when VTW_REDIS_CLUSTER
    does not match the Redis named. A Redis that cannot be reached yet passes: the processes
    wait it out as they would later."""
    if settings.redis_url is None or not settings.redis_cluster:
        return
    cluster = cast(HealingCluster, connect(settings))
    try:
        await cluster.initialize()
    except (RedisClusterException, RedisConnectionError, RedisTimeoutError, OSError):
        pass
    finally:
        await cluster.aclose()


async def subscriber(redis: aioredis.Redis) -> PubSub:
    """A Pub/Sub connection. On a cluster: to one node, any (a PUBLISH reaches every node),
    drawn again at each call, so a resubscription after a node failed goes elsewhere."""
    if isinstance(redis, RedisCluster):
        await redis.initialize()  # once: the nodes are known after that
        node = random.choice(redis.get_nodes())
        redis = aioredis.Redis(  # no silent reconnect: a lost subscription must surface
            host=node.host,
            port=node.port,
            decode_responses=True,
            socket_connect_timeout=2,
            health_check_interval=15,
            retry=Retry(NoBackoff(), retries=0),
        )
    return redis.pubsub(ignore_subscribe_messages=True)


def embedded() -> aioredis.Redis:
    import fakeredis

    logger.warning(EMBEDDED_WARNING)
    return fakeredis.FakeAsyncRedis(decode_responses=True)


async def retry_idempotent(call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`, again after a connection error or timeout: only for commands that give the
    same result when they ran twice (keyed by an id drawn before the first try)."""
    for attempt in range(IDEMPOTENT_RETRIES + 1):
        try:
            return await call()
        except (RedisConnectionError, RedisTimeoutError):
            if attempt == IDEMPOTENT_RETRIES:
                raise
            await asyncio.sleep(IDEMPOTENT_RETRY_DELAY * (attempt + 1))
    raise AssertionError("unreachable")
