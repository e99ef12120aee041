"""Item 18 (b) and (d) of #8: retention waits for a manual retry to settle, and time is Redis's.

(b) A manual retry accepted just before the watch's retention ends must not be swept with it: the
watch is kept while its delivery is pending, then deleted at the sweep's next look. Redis time
cannot be moved, so "just before" is made by moving the watch's retention score (what finish.lua
wrote) a moment ahead of Redis time, and "an hour later" by moving it behind.

(d) Watch ids, `created_at` and the `webhook-timestamp` header come from Redis TIME, whatever the
API or worker host's clock says. Those tests need a real Redis: fakeredis answers TIME from this
process's `time.time`, the very clock they skew.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import suppress
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from client.webhooks import verify
from service.api.schemas import WatchCreate
from service.errors import WatchNotFound
from service.settings import Settings
from service.store.outbox import Outbox
from service.store.watches import RETENTION_RECHECK_MS, Store
from tests.fakes import served
from tests.service_fixtures import ApiFactory, delete_namespace, real_redis_or_skip
from worker.dispatcher import Dispatcher

from .test_outbox import ended_with_webhook, lease_delivery
from .test_store import TENANT, claim_one, counts, in_zset, raw_doc, save, terminal

SKEW_SECONDS = 600.0  # the host 10 minutes off
SLACK_SECONDS = 3.0  # how far a time read over loopback may trail the Redis TIME read after it
WEEK_MS = 7 * 86400 * 1000  # the store's default retention
DELIVERED: dict[str, Any] = {"status_code": 204, "error": None, "latency_ms": 3}
GONE: dict[str, Any] = {"status_code": 410, "error": "HTTP 410", "latency_ms": 3}
TRUE_TIME, TRUE_TIME_NS = time.time, time.time_ns


async def until_redis_time_passes(store: Store, moment_ms: int) -> None:
    deadline = time.monotonic() + 5
    while await store.server_time_ms() <= moment_ms:
        assert time.monotonic() < deadline, "Redis time did not move"
        await asyncio.sleep(0.01)


# -- (b) retention and a manual retry --------------------------------------------------------


@pytest.mark.parametrize("settled", ["delivered", "failed"])
async def test_a_manual_retry_just_before_retention_ends_is_not_swept(
    store: Store, settled: str
) -> None:
    outbox = Outbox(store.redis, namespace=store.keys.namespace)
    watch_id = await ended_with_webhook(store)
    k = store.keys.of(watch_id)
    finished_at = (await store.get(TENANT, watch_id))["updated_at"]
    assert await store.redis.zscore(k.expiry, watch_id) == pytest.approx(
        finished_at + WEEK_MS, abs=1000
    )  # retention counts from the end of the watch
    first = await lease_delivery(outbox)
    attempt = DELIVERED if settled == "delivered" else GONE
    assert await outbox.record_attempt(first, attempt, settled)
    assert await counts(store) == {"completed": 1, f"wh:{settled}": 1}
    assert not await in_zset(store, k.outbox, watch_id)

    # Retention ends in 300 ms; the manual retry is accepted before then.
    retention_end = await store.server_time_ms() + 300
    await store.redis.zadd(k.expiry, {watch_id: retention_end}, xx=True)
    await outbox.redeliver(TENANT, watch_id)
    assert await counts(store) == {"completed": 1, "wh:pending": 1}
    await until_redis_time_passes(store, retention_end)
    swept_at = await store.server_time_ms()

    assert await store.forget_expired() == 0

    kept = await store.get(TENANT, watch_id)
    assert kept["webhook"]["state"] == "pending"
    assert await in_zset(store, k.outbox, watch_id)  # the retry is still queued
    assert len(await outbox.attempts(watch_id)) == 1
    assert await counts(store) == {"completed": 1, "wh:pending": 1}
    recheck = await store.redis.zscore(k.expiry, watch_id)
    assert swept_at + RETENTION_RECHECK_MS <= recheck
    assert recheck <= await store.server_time_ms() + RETENTION_RECHECK_MS

    # An hour on, the retry is in flight (a slow receiver): still kept.
    retry = await lease_delivery(outbox)
    assert retry.id == watch_id and retry.doc["webhook"]["cycle_attempts"] == 0
    await store.redis.zadd(k.expiry, {watch_id: await store.server_time_ms() - 1}, xx=True)
    assert await store.forget_expired() == 0
    assert (await store.get(TENANT, watch_id))["webhook"]["state"] == "pending"
    assert await counts(store) == {"completed": 1, "wh:pending": 1}

    # The retry settles: the watch goes at the sweep's next look (an hour on), not before.
    assert await outbox.record_attempt(retry, DELIVERED, "delivered")
    assert await counts(store) == {"completed": 1, "wh:delivered": 1}
    assert await store.forget_expired() == 0
    assert (await store.get(TENANT, watch_id))["webhook"]["state"] == "delivered"
    next_look = await store.redis.zscore(k.expiry, watch_id)
    assert next_look > await store.server_time_ms() + RETENTION_RECHECK_MS - 60_000

    await store.redis.zadd(k.expiry, {watch_id: await store.server_time_ms() - 1}, xx=True)
    assert await store.forget_expired() == 1

    with pytest.raises(WatchNotFound):
        await store.get(TENANT, watch_id)
    assert await raw_doc(store, watch_id) is None
    assert not await store.redis.exists(k.deliveries(watch_id))
    assert not await in_zset(store, k.expiry, watch_id)
    assert not await in_zset(store, k.index(TENANT), watch_id)
    assert not await in_zset(store, k.index(TENANT, "completed"), watch_id)
    assert not await in_zset(store, k.outbox, watch_id)
    assert await counts(store) == {}


# -- (d) Redis time, whatever the host's clock -----------------------------------------------


def skew_local_clock(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """This process's wall clock `seconds` off (Redis, another process, keeps true time)."""
    monkeypatch.setattr(time, "time", lambda: TRUE_TIME() + seconds)
    monkeypatch.setattr(time, "time_ns", lambda: TRUE_TIME_NS() + int(seconds * 1e9))


@pytest.mark.parametrize("redis_client", ["redis"], indirect=True)  # fakeredis: the skewed clock
async def test_the_webhook_timestamp_is_redis_time_on_a_worker_10_minutes_ahead(
    store: Store, monkeypatch: pytest.MonkeyPatch, no_vtw_env: None
) -> None:
    arrivals: list[tuple[dict[str, str], bytes]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        headers = {name.lower(): value for name, value in request.headers.items()}
        arrivals.append((headers, await request.read()))
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", receive)
    async with served(app) as base:
        url = f"{base}/hooks"
        spec = WatchCreate.model_validate(
            {"status_url": "http://translate-1:5000/status", "webhook_url": url}
        ).spec()
        await store.register(TENANT, spec, 3600)
        claimed = await claim_one(store)
        assert await save(store, claimed, terminal(claimed, "completed", "pending"))
        outbox = Outbox(store.redis, namespace=store.keys.namespace)

        skew_local_clock(monkeypatch, SKEW_SECONDS)
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(outbox, session, Settings())
            running = asyncio.create_task(dispatcher.run(grace_seconds=1.0))
            with suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 5)
            dispatcher.stop()
            await asyncio.wait_for(running, 5)
    redis_now = await store.server_time_ms() / 1000

    assert len(arrivals) == 1, arrivals
    headers, body = arrivals[0]
    sent_at = int(headers["webhook-timestamp"])
    assert redis_now - SLACK_SECONDS <= sent_at <= redis_now
    assert time.time() - sent_at == pytest.approx(SKEW_SECONDS, abs=SLACK_SECONDS)
    secret = (await outbox.secrets(TENANT)).current
    verify(secret, headers, body, now=redis_now)  # signed over that timestamp
    ended = await store.get(TENANT, claimed.id)
    assert ended["webhook"]["state"] == "delivered"
    (attempt,) = await outbox.attempts(claimed.id)
    assert attempt["status_code"] == 204
    assert redis_now - SLACK_SECONDS <= attempt["at"] / 1000 <= redis_now


def millis(moment: str) -> int:
    return round(datetime.fromisoformat(moment).timestamp() * 1000)


async def test_watch_ids_and_created_at_are_redis_time_whatever_the_api_hosts_clock(
    make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two API hosts, one 10 minutes ahead and one 10 minutes behind: each watch's id and
    created_at are Redis time, and "newest first" and cursors follow the order of creation."""
    redis = await real_redis_or_skip(decode_responses=True)  # closed by make_api
    namespace = "t" + secrets.token_hex(6)
    try:
        api = await make_api(Settings(namespace=namespace), redis=redis)
        body = {"status_url": "http://translate-1:5000/status"}
        created = []
        for skew in (SKEW_SECONDS, -SKEW_SECONDS):
            skew_local_clock(monkeypatch, skew)
            response = await api.post("/v1/watches", json=body)
            assert response.status_code == 201, response.text
            created.append(response.json())
            await asyncio.sleep(0.002)  # ids order by millisecond
        skew_local_clock(monkeypatch, 0)
        redis_now = await redis.time()
        redis_now_ms = int(redis_now[0]) * 1000 + int(redis_now[1]) // 1000

        for watch in created:
            created_ms = millis(watch["created_at"])
            assert redis_now_ms - SLACK_SECONDS * 1000 <= created_ms <= redis_now_ms
            id_ms = int(watch["id"][2:14], 16)  # w_ + 12 hex digits of milliseconds
            assert 0 <= created_ms - id_ms < 1000
        ahead, behind = (watch["id"] for watch in created)
        assert behind > ahead

        first = (await api.get("/v1/watches", params={"limit": 1})).json()
        assert [w["id"] for w in first["items"]] == [behind]  # the newest, by Redis time
        assert first["next_cursor"] == behind
        rest = (await api.get("/v1/watches", params={"limit": 1, "cursor": behind})).json()
        assert [w["id"] for w in rest["items"]] == [ahead]
    finally:
        await delete_namespace(redis, namespace)
