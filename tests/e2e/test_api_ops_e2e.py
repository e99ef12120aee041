"""A real `vtwatch api`: `/metrics` with keys set answers only with one; a process started
while Redis is down answers `503` (readiness and writes) until the store's partition count
matches its own, then `201`."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from service.store.keys import Keys

from .procs import SHARED_REDIS_URL, Processes, free_port, poll_until, service_env

pytestmark = [pytest.mark.e2e]
KEY = "metrics-e2e-key-0123456789"
BODY = {"status_url": "http://127.0.0.1:9/status"}


async def test_metrics_of_an_api_with_keys_needs_a_key(
    procs: Processes, namespace: str, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, api_keys=f"acme:{KEY}")
    _, url = await procs.start_api(env)

    missing = await http.get(f"{url}/metrics")
    wrong = await http.get(f"{url}/metrics", headers={"Authorization": "Bearer wrong-key-0123"})
    keyed = await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"})

    for refused in (missing, wrong):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "vtwatch_" not in refused.text
    assert keyed.status_code == 200
    assert "vtwatch_due_backlog" in keyed.text


async def test_an_api_started_without_redis_refuses_writes_until_the_partitions_match(
    procs: Processes, http: httpx.AsyncClient, data_dir: Path
) -> None:
    port = free_port()
    namespace = "e2e" + secrets.token_hex(6)
    env = service_env(f"redis://127.0.0.1:{port}/0", namespace, partitions=4)
    _, url = await procs.start_api(env)  # /healthz answers without Redis

    assert (await http.get(f"{url}/readyz")).status_code == 503
    assert (await http.post(f"{url}/v1/watches", json=BODY)).status_code == 503

    await procs.start_redis(port, data_dir)
    redis = aioredis.Redis(port=port, decode_responses=True)
    try:
        meta = Keys(namespace).meta
        await redis.hset(meta, "partitions", 2)  # the store was created with P = 2

        async def mismatch_seen() -> httpx.Response | None:
            ready = await http.get(f"{url}/readyz")
            return ready if "reason" in ready.json() else None

        ready = await poll_until(mismatch_seen, timeout=10, what="readiness to see Redis")
        refused = await http.post(f"{url}/v1/watches", json=BODY)
        assert ready.status_code == 503 and "VTW_PARTITIONS is 4" in ready.json()["reason"]
        assert refused.status_code == 503, refused.text
        assert "VTW_PARTITIONS is 4" in refused.json()["detail"]
        assert await redis.keys("*") == [meta]  # no watch written

        await redis.hset(meta, "partitions", 4)
        ready = await http.get(f"{url}/readyz")
        created = await http.post(f"{url}/v1/watches", json=BODY)
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        assert created.status_code == 201, created.text
    finally:
        await redis.aclose()
