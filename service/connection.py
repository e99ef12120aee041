"""Connecting to Redis, or to the embedded in-memory store when no URL is configured."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .settings import Settings

logger = logging.getLogger(__name__)
EMBEDDED_WARNING = (
    "VTW_REDIS_URL is not set: using the EMBEDDED IN-MEMORY store. Nothing is durable and "
    "nothing is shared with other processes; set VTW_REDIS_URL for real use."
)


def connect(settings: Settings) -> aioredis.Redis:
    """A Redis client with a blocking pool (waits for a connection instead of failing)."""
    if settings.redis_url is None:
        return embedded()
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max(16, settings.worker_concurrency // 4),
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        # Retry only failures to connect or send: a command that timed out may have run, and
        # running a script twice is not always harmless (register.lua is made safe anyway).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis(connection_pool=pool)


def embedded() -> aioredis.Redis:
    import fakeredis

    logger.warning(EMBEDDED_WARNING)
    return fakeredis.FakeAsyncRedis(decode_responses=True)
