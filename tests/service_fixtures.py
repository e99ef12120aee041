"""Fixtures of the watch service's tests: Redis clients, stores and the API app.

A test module loads them with `pytest_plugins = ["tests.service_fixtures"]` and may also import
helpers from here. PYTEST_DONT_REWRITE: no asserts live here, and the marker keeps pytest from
warning (an error under `filterwarnings = error`) when a plain import came first.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import fakeredis
import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.api.app import create_app
from service.settings import Settings
from service.store.connection import connect
from service.store.watches import Store
from tests.redis_cluster import LocalCluster, cluster  # noqa: F401 (the session fixture)

REAL_REDIS_URL = os.environ.get("VTW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Nothing listens on port 1: every command fails at once with a connection error.
DOWN_REDIS_URL = "redis://127.0.0.1:1/0"


def fake_redis() -> aioredis.Redis:
    """A fresh in-memory Redis (each instance has its own data), Lua included."""
    return fakeredis.FakeAsyncRedis(decode_responses=True)


def down_redis() -> aioredis.Redis:
    return aioredis.Redis.from_url(
        DOWN_REDIS_URL, decode_responses=True, socket_connect_timeout=0.2
    )


async def real_redis_or_skip(**options: Any) -> aioredis.Redis:
    """A client of the test Redis ($VTW_TEST_REDIS_URL); the test is skipped if none answers."""
    client = aioredis.Redis.from_url(REAL_REDIS_URL, socket_connect_timeout=1, **options)
    try:
        await client.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        await client.aclose()
        pytest.skip(f"no Redis at {REAL_REDIS_URL} (set VTW_TEST_REDIS_URL): {exc}")
    return client


def cluster_client(url: str) -> aioredis.Redis:
    """A client of a Redis Cluster, configured as the service's (`connect`)."""
    return connect(Settings(redis_url=url, redis_cluster=True))


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """The contract suite runs against fakeredis, the real Redis and a real Redis Cluster."""
    if request.param == "fakeredis":
        client = fake_redis()
    elif request.param == "cluster":
        local: LocalCluster = request.getfixturevalue("cluster")
        client = cluster_client(local.url)
        # As the service does at start (its partition check): concurrent first commands on a
        # client that has not read the slot map yet can fail (redis-py).
        await client.initialize()
    else:
        client = await real_redis_or_skip(decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def delete_namespace(client: aioredis.Redis, namespace: str) -> None:
    """Every key of the namespace, of any partition (one by one: a cluster spreads them)."""
    keys = [key async for key in client.scan_iter(match=f"vtw:{{{namespace}*", count=500)]
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.delete(key)
        await pipe.execute()


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> AsyncIterator[Store]:
    """A store in a fresh random namespace, whose keys are deleted afterwards."""
    namespace = "t" + secrets.token_hex(6)
    try:
        yield Store(redis_client, namespace=namespace)
    finally:
        await delete_namespace(redis_client, namespace)


ApiFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
def no_vtw_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() must not pick up the developer's `VTW_*` variables."""
    for name in list(os.environ):
        if name.startswith("VTW_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def make_api(no_vtw_env: None) -> AsyncIterator[ApiFactory]:
    """Start the API app (lifespan included) and return an HTTP client for it.

    `await make_api(settings, redis=...)`: settings default to open mode, redis to a fresh
    fakeredis. Everything is closed when the test ends.
    """
    async with AsyncExitStack() as stack:

        async def start(
            settings: Settings | None = None,
            redis: aioredis.Redis | None = None,
            headers: dict[str, Any] | None = None,
        ) -> httpx.AsyncClient:
            if redis is None:
                redis = fake_redis()
            stack.push_async_callback(redis.aclose)
            app = create_app(settings or Settings(), redis=redis)
            await stack.enter_async_context(app.router.lifespan_context(app))
            return await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app),
                    base_url="http://test",
                    headers=headers,
                )
            )

        yield start


@pytest.fixture
async def api(make_api: ApiFactory) -> httpx.AsyncClient:
    """The API in open mode (no keys; everyone is tenant `default`) over fakeredis."""
    return await make_api()
