"""Contract of the outbox (webhook side of the store), against fakeredis and a real Redis:
manual redelivery, delivery leases, secret rotation."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.webhooks import new_secret
from service.store.outbox import Outbox
from service.store.queue import Claimed
from service.store.watches import Store

from .test_store import TENANT, claim_one, counts, register, save, terminal


@pytest.fixture
async def outbox(store: Store, redis_client: aioredis.Redis) -> AsyncIterator[Outbox]:
    yield Outbox(redis_client, namespace=store.keys.namespace)


async def ended_with_webhook(store: Store) -> str:
    """A completed watch whose webhook is queued in the outbox."""
    await register(store)
    claimed = await claim_one(store)
    assert await save(store, claimed, terminal(claimed, "completed", "pending"))
    return claimed.id


async def lease_delivery(outbox: Outbox) -> Claimed:
    claim = await outbox.queue.claim(10, 30, secrets.token_hex(4))
    assert len(claim.watches) == 1, claim
    return claim.watches[0]


ATTEMPT: dict[str, Any] = {"status_code": 500, "error": "HTTP 500", "latency_ms": 3}


async def test_a_manual_retry_makes_a_scheduled_retry_due_now(store: Store, outbox: Outbox) -> None:
    """With a retry scheduled a minute out, POST .../deliveries/retry sends now (item 5 of #8)."""
    watch_id = await ended_with_webhook(store)
    delivery = await lease_delivery(outbox)
    assert await outbox.record_attempt(delivery, ATTEMPT, "retry", 60.0)
    assert (await outbox.queue.claim(10, 30, "t2")).watches == []  # not due for a minute

    await outbox.redeliver(TENANT, watch_id)

    again = await outbox.queue.claim(10, 30, "t3")
    assert [c.id for c in again.watches] == [watch_id]
    assert again.watches[0].doc["webhook"]["cycle_attempts"] == 0  # a fresh schedule


async def test_a_retry_asked_for_during_an_attempt_follows_it_even_after_a_410(
    store: Store, outbox: Outbox
) -> None:
    """Asked for while an attempt is in flight, a retry is neither lost (that attempt gets a 410)
    nor sent concurrently (the in-flight lease is kept)."""
    watch_id = await ended_with_webhook(store)
    delivery = await lease_delivery(outbox)

    await outbox.redeliver(TENANT, watch_id)
    assert (await outbox.queue.claim(10, 30, "t2")).watches == []  # still leased: no twin
    gone = {"status_code": 410, "error": "HTTP 410", "latency_ms": 3}
    assert await outbox.record_attempt(delivery, gone, "failed")

    again = await outbox.queue.claim(10, 30, "t3")
    assert [c.id for c in again.watches] == [watch_id]
    webhook = again.watches[0].doc["webhook"]
    assert webhook["state"] == "pending" and "redeliver" not in webhook
    assert await counts(store) == {"completed": 1, "wh:pending": 1}


async def test_a_retry_after_delivery_sends_again_and_counts_stay_exact(
    store: Store, outbox: Outbox
) -> None:
    watch_id = await ended_with_webhook(store)
    delivery = await lease_delivery(outbox)
    ok = {"status_code": 204, "error": None, "latency_ms": 3}
    assert await outbox.record_attempt(delivery, ok, "delivered")
    assert await counts(store) == {"completed": 1, "wh:delivered": 1}

    await outbox.redeliver(TENANT, watch_id)

    assert await counts(store) == {"completed": 1, "wh:pending": 1}
    again = await lease_delivery(outbox)
    assert await outbox.record_attempt(again, ok, "delivered")
    assert await counts(store) == {"completed": 1, "wh:delivered": 1}


async def test_recording_an_attempt_twice_records_it_once(store: Store, outbox: Outbox) -> None:
    """deliver.lua drops the lease: a re-sent call (lost reply) changes nothing."""
    await ended_with_webhook(store)
    delivery = await lease_delivery(outbox)
    ok = {"status_code": 204, "error": None, "latency_ms": 3}

    assert await outbox.record_attempt(delivery, ok, "delivered") is True
    assert await outbox.record_attempt(delivery, ok, "delivered") is False

    assert len(await outbox.attempts(delivery.id)) == 1
    assert await counts(store) == {"completed": 1, "wh:delivered": 1}


async def test_every_secret_rotated_out_in_the_last_day_keeps_signing(outbox: Outbox) -> None:
    """Two rotations within 24 h: both old secrets still sign (item 18a of #8)."""
    first = (await outbox.secrets(TENANT)).current
    second = (await outbox.rotate_secret(TENANT)).current

    third = await outbox.rotate_secret(TENANT)

    assert third.current not in (first, second)
    assert third.previous == [second, first]
    assert third.live == [third.current, second, first]


async def test_a_repeated_rotation_with_its_request_id_changes_nothing(outbox: Outbox) -> None:
    """A rotate sent again after a lost reply must not rotate twice (item 3 of #8)."""
    first = (await outbox.secrets(TENANT)).current
    rotate = outbox._scripts["rotate"]
    keys = [outbox.keys.secret(TENANT)]

    await rotate(keys=keys, args=[new_secret(), 86_400_000, "request-1", 10])
    await rotate(keys=keys, args=[new_secret(), 86_400_000, "request-1", 10])

    after = await outbox.secrets(TENANT)
    assert after.previous == [first]
    assert after.current != first


async def test_expired_old_secrets_stop_signing_and_are_dropped(outbox: Outbox) -> None:
    first = (await outbox.secrets(TENANT)).current
    rotate = outbox._scripts["rotate"]
    keys = [outbox.keys.secret(TENANT)]
    await rotate(keys=keys, args=[new_secret(), 1, "r1", 10])  # a grace of 1 ms
    await asyncio.sleep(0.01)

    assert (await outbox.secrets(TENANT)).previous == []
    await outbox.rotate_secret(TENANT)
    stored = await outbox.redis.hkeys(keys[0])
    assert f"old:{first}" not in stored


async def test_a_retry_after_a_dead_dispatchers_lapsed_lease_is_sent_once(
    store: Store, outbox: Outbox
) -> None:
    """The lease of a SIGKILLed dispatcher is not an attempt in flight: the retry is queued
    now, and no flag makes the next holder send it twice."""
    watch_id = await ended_with_webhook(store)
    await outbox.queue.claim(10, 0.05, "dead-worker")  # never recorded: its worker died
    await asyncio.sleep(0.1)

    await outbox.redeliver(TENANT, watch_id)

    delivery = await lease_delivery(outbox)
    assert "redeliver" not in delivery.doc["webhook"]
    ok = {"status_code": 204, "error": None, "latency_ms": 3}
    assert await outbox.record_attempt(delivery, ok, "delivered")
    assert (await outbox.queue.claim(10, 30, "t9")).watches == []
    assert await counts(store) == {"completed": 1, "wh:delivered": 1}


async def test_rotations_keep_at_most_ten_old_secrets_signing(outbox: Outbox) -> None:
    for _ in range(15):
        await outbox.rotate_secret(TENANT)

    live = await outbox.secrets(TENANT)

    assert len(live.previous) == 10
    assert len(set(live.live)) == 11
