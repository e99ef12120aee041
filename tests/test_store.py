"""Contract of the Redis store, run against fakeredis and against a real Redis.

Each test works in a fresh namespace (see `tests/service_fixtures.py`).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import secrets
import time
from typing import Any

import pytest

from service.domain import WatchState
from service.errors import (
    IdempotencyConflict,
    IdempotencyKeyExpired,
    TooManyWatches,
    WatchConflict,
    WatchNotFound,
)
from service.store.queue import Claim, Claimed
from service.store.scripts import run_scripts
from service.store.watches import Store

TENANT = "acme"
Doc = Any  # documents the tests build and alter freely


async def save(store: Store, claimed: Claimed, doc: Doc) -> bool:
    return (await store.save([(claimed, doc)]))[0]


async def record_in(store: Store, claimed: Claimed, doc: Doc, seconds: float) -> bool:
    """Save a poll of a pending watch, due again `seconds` from now (Redis time)."""
    doc["next_poll_at"] = await store.server_time_ms() + int(seconds * 1000)
    return await save(store, claimed, doc)


async def claim(store: Store, limit: int = 10, lease_seconds: float = 30.0) -> Claim:
    return await store.schedule.claim(limit, lease_seconds, secrets.token_hex(4))


SPEC = {
    "status_url": "http://translate-1:5000/status",
    "webhook_url": None,
    "policy": {"initial_wait_time": 1.0, "max_wait_time": 3600},
    "metadata": {"video": "abc.mp4"},
}
LONG_LEASE = 30.0


async def register(store: Store, tenant: str = TENANT, **kwargs: Any) -> Doc:
    doc, created = await store.register(tenant, SPEC, 3600, **kwargs)
    assert created
    return doc


async def claim_one(store: Store, lease_seconds: float = LONG_LEASE) -> Claimed:
    claimed = await claim(store, 10, lease_seconds)
    assert len(claimed.watches) == 1, claimed
    return claimed.watches[0]


async def claim_within(
    store: Store, seconds: float, lease_seconds: float = LONG_LEASE, limit: int = 10
) -> Claim:
    """Claim until something is returned or `seconds` have passed (then the empty claim)."""
    deadline = time.monotonic() + seconds
    while True:
        claimed = await claim(store, limit, lease_seconds)
        if claimed.watches or time.monotonic() > deadline:
            return claimed
        await asyncio.sleep(0.01)


def terminal(claimed: Claimed, state: str, webhook_state: str) -> Doc:
    """The claimed document as a worker would finish it."""
    doc = copy.deepcopy(claimed.doc)
    doc["state"] = state
    doc["finished_at"] = doc["updated_at"] + 1
    doc["webhook"]["state"] = webhook_state
    return doc


async def counts(store: Store, tenant: str = TENANT) -> dict[str, int]:
    """The tenant's counts, without zeros; and none of them negative."""
    raw = await store.counts(tenant)
    assert all(value >= 0 for value in raw.values()), raw
    return {name: value for name, value in raw.items() if value}


async def raw_doc(store: Store, watch_id: str) -> str | None:
    raw: str | None = await store.redis.get(store.keys.watch(watch_id))
    return raw


async def in_zset(store: Store, key: str, member: str) -> bool:
    return await store.redis.zscore(key, member) is not None


# -- registering and reading ---------------------------------------------------------------


async def test_register_then_get_returns_the_stored_watch(store: Store) -> None:
    doc = await register(store)

    assert doc["state"] == "pending"
    assert doc["tenant"] == TENANT
    assert json.loads(doc["spec"]) == SPEC
    assert doc["attempts"] == 0
    assert doc["webhook"] == {
        "state": "none",
        "attempts": 0,
        "last_status_code": None,
        "cycle_attempts": 0,
    }
    assert doc["next_poll_at"] == doc["created_at"] == doc["updated_at"]
    assert doc["deadline"] == doc["created_at"] + 3600 * 1000
    assert doc["finished_at"] is None
    assert await store.get(TENANT, doc["id"]) == doc
    assert await counts(store) == {"pending": 1}


async def test_same_idempotency_key_and_fingerprint_returns_the_earlier_watch(
    store: Store,
) -> None:
    first = await register(store, idempotency_key="k1", fingerprint="f1")

    again, created = await store.register(
        TENANT, SPEC, 3600, idempotency_key="k1", fingerprint="f1"
    )

    assert created is False
    assert again == first
    assert await counts(store) == {"pending": 1}


async def test_same_idempotency_key_with_other_fingerprint_conflicts(store: Store) -> None:
    first = await register(store, idempotency_key="k1", fingerprint="f1")

    with pytest.raises(IdempotencyConflict) as raised:
        await store.register(TENANT, SPEC, 3600, idempotency_key="k1", fingerprint="f2")

    assert raised.value.watch_id == first["id"]
    assert await counts(store) == {"pending": 1}


async def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    mine = await register(store, idempotency_key="k1", fingerprint="f1")
    theirs = await register(store, tenant="other", idempotency_key="k1", fingerprint="f2")

    assert theirs["id"] != mine["id"]


async def test_another_tenants_watch_is_not_found(store: Store) -> None:
    doc = await register(store)

    with pytest.raises(WatchNotFound):
        await store.get("other", doc["id"])
    with pytest.raises(WatchNotFound):
        await store.get(TENANT, "w_000000000000nosuchwatch")


async def test_list_pages_newest_first_with_a_cursor(store: Store) -> None:
    ids = []
    for _ in range(5):
        ids.append((await register(store))["id"])
        await asyncio.sleep(0.002)  # ids sort by millisecond: keep the order unambiguous
    await register(store, tenant="other")

    seen, cursor, pages = [], None, 0
    while True:
        page = await store.page(TENANT, None, 2, cursor)
        pages += 1
        seen += [doc["id"] for doc in page.docs]
        cursor = page.next_cursor
        if cursor is None:
            break

    assert seen == ids[::-1]
    assert pages == 3
    whole = await store.page(TENANT, None, 5, None)
    assert [doc["id"] for doc in whole.docs] == ids[::-1]
    assert whole.next_cursor is None


async def test_list_filters_by_state(store: Store) -> None:
    kept = await register(store)
    cancelled = await register(store)
    await store.cancel(TENANT, cancelled["id"])

    pending = await store.page(TENANT, WatchState.PENDING, 10, None)
    ended = await store.page(TENANT, WatchState.CANCELLED, 10, None)
    completed = await store.page(TENANT, WatchState.COMPLETED, 10, None)

    assert [doc["id"] for doc in pending.docs] == [kept["id"]]
    assert [doc["id"] for doc in ended.docs] == [cancelled["id"]]
    assert [doc["state"] for doc in ended.docs] == ["cancelled"]
    assert completed.docs == []
    assert completed.next_cursor is None


# -- claiming and leases -------------------------------------------------------------------


async def test_a_new_watch_is_due_at_once_and_a_claim_leases_it(store: Store) -> None:
    doc = await register(store)

    leased = await store.schedule.claim(10, LONG_LEASE, "tok-1")

    assert [(c.id, c.doc, c.token) for c in leased.watches] == [(doc["id"], doc, "tok-1")]
    expires = leased.now_ms + LONG_LEASE * 1000
    assert leased.next_due_ms == expires
    assert await store.redis.zscore(store.keys.of(doc["id"]).schedule, doc["id"]) == expires
    assert await store.redis.hget(store.keys.of(doc["id"]).leases, doc["id"]) == "tok-1"
    assert (await claim(store)).watches == []


async def test_claim_returns_only_due_watches(store: Store) -> None:
    later = await register(store)
    claimed = await claim_one(store)
    assert await record_in(store, claimed, claimed.doc, 60)  # next poll in a minute
    assert not await store.redis.hexists(
        store.keys.of(claimed.id).leases, claimed.id
    )  # lease given back
    due = await register(store)

    leased = await claim(store)

    assert [c.id for c in leased.watches] == [due["id"]]
    # the earliest thing in the schedule is now that new lease (30 s), not `later` (60 s)
    assert leased.next_due_ms == leased.now_ms + LONG_LEASE * 1000
    assert (
        await store.redis.zscore(store.keys.of(later["id"]).schedule, later["id"])
        > leased.next_due_ms
    )
    assert (await claim(store)).watches == []


async def test_claim_respects_its_limit(store: Store) -> None:
    for _ in range(3):
        await register(store)

    first = await claim(store, 2)
    second = await claim(store, 2)

    assert len(first.watches) == 2
    assert len(second.watches) == 1
    assert {c.id for c in first.watches}.isdisjoint({c.id for c in second.watches})


async def test_an_expired_lease_is_reclaimed_with_another_token(store: Store) -> None:
    doc = await register(store)
    first = await claim_one(store, lease_seconds=0.05)

    second = await claim_within(store, seconds=2.0)

    assert [c.id for c in second.watches] == [doc["id"]]
    assert second.watches[0].token != first.token
    assert await record_in(store, first, first.doc, 1) is False


async def test_extend_moves_the_expiry_and_keeps_the_token(store: Store) -> None:
    await register(store)
    claimed = await claim_one(store, lease_seconds=0.05)

    assert await store.schedule.extend([claimed], LONG_LEASE) == [True]

    assert await store.redis.hget(store.keys.of(claimed.id).leases, claimed.id) == claimed.token
    await asyncio.sleep(0.1)  # the first lease would have expired by now
    assert (await claim(store)).watches == []
    # The token held since the claim still writes: an extension never voids a write in flight.
    assert await record_in(store, claimed, claimed.doc, 1) is True


async def test_an_extension_after_the_write_changes_nothing(store: Store) -> None:
    """The lease keeper may extend a lease whose poll has just been saved (item 2 of #8)."""
    await register(store)
    claimed = await claim_one(store)
    assert await record_in(store, claimed, claimed.doc, 60) is True
    due = await store.redis.zscore(store.keys.of(claimed.id).schedule, claimed.id)

    assert await store.schedule.extend([claimed], LONG_LEASE) == [False]

    assert await store.redis.zscore(store.keys.of(claimed.id).schedule, claimed.id) == due


async def test_release_makes_a_leased_watch_due_at_once(store: Store) -> None:
    await register(store)
    claimed = await claim_one(store)

    await store.schedule.release([claimed])

    again = await claim(store)
    assert [c.id for c in again.watches] == [claimed.id]
    assert await record_in(store, claimed, claimed.doc, 1) is False


async def test_a_claim_whose_reply_was_lost_is_handed_back_by_the_next(store: Store) -> None:
    """A claim that timed out may have run: the next claim, given its token, frees its batch."""
    ids = {(await register(store))["id"] for _ in range(3)}
    lost = await store.schedule.claim(10, LONG_LEASE, "lost-token")  # the reply never arrived
    assert {c.id for c in lost.watches} == ids

    recovered = await store.schedule.claim(10, LONG_LEASE, "next-token", "lost-token")

    assert {c.id for c in recovered.watches} == ids
    assert {c.token for c in recovered.watches} == {"next-token"}
    assert await store.redis.hvals(store.keys.parts[0].leases) == ["next-token"] * 3


async def test_record_with_the_current_token_saves_and_reschedules(store: Store) -> None:
    await register(store)
    claimed = await claim_one(store)
    polled = {**claimed.doc, "attempts": 1, "last_result": "pending", "progress": 42.5}

    assert await record_in(store, claimed, polled, 0.2) is True

    assert await store.get(TENANT, claimed.id) == polled
    assert (await claim(store)).watches == []  # not due before its delay
    again = await claim_within(store, seconds=2.0)
    assert [c.doc for c in again.watches] == [polled]
    assert await counts(store) == {"pending": 1}


async def test_save_mixes_records_and_finishes_and_survives_a_script_flush(store: Store) -> None:
    for _ in range(3):
        await register(store)
    first, second, third = (await claim(store)).watches
    await store.redis.script_flush()  # as after a Redis restart: the scripts must be reloaded
    now = await store.server_time_ms()
    polled = {**first.doc, "attempts": 1, "next_poll_at": now + 60_000}
    done = terminal(second, "completed", "none")
    stale = dataclasses.replace(third, token="not-the-token")

    changed = {**third.doc, "attempts": 1}
    saved = await store.save([(first, polled), (second, done), (stale, changed)])

    assert saved == [True, True, False]
    assert await store.get(TENANT, first.id) == polled
    assert await store.redis.zscore(store.keys.of(first.id).schedule, first.id) == now + 60_000
    assert (await store.get(TENANT, second.id))["state"] == "completed"
    assert await counts(store) == {"pending": 2, "completed": 1}


async def test_run_scripts_after_a_script_flush_raises_only_the_errors_it_would_have(
    store: Store,
) -> None:
    """Reloaded after NOSCRIPT, the calls from `raise_from` on still return their errors: a
    failing call after the caller's own (a host report) does not make an applied save look
    failed."""
    redis = store.redis
    own = redis.register_script("return redis.call('SET', KEYS[1], ARGV[1]) and 1")
    other = redis.register_script("return redis.call('HSET', KEYS[1], 'f', 'v')")
    saved, wrong_type = store.keys.prefix + "saved", store.keys.prefix + "string"
    await redis.set(wrong_type, "x")
    calls = [(own, [saved], ["yes"]), (other, [wrong_type], [])]
    for flushed in (False, True):
        if flushed:
            await redis.script_flush()
        else:
            await redis.script_load(own.script)
            await redis.script_load(other.script)
        results = await run_scripts(redis, calls, raise_from=1)
        assert results[0] == 1 and isinstance(results[1], Exception), flushed
    assert await redis.get(saved) == "yes"
    await redis.script_flush()
    with pytest.raises(Exception, match="WRONGTYPE"):
        await run_scripts(redis, calls[::-1], raise_from=1)  # the failing call is the caller's
    await redis.delete(saved, wrong_type)


async def test_a_stale_token_changes_nothing(store: Store) -> None:
    await register(store)
    stale = await claim_one(store, lease_seconds=0.05)
    current = (await claim_within(store, seconds=2.0)).watches[0]
    before = await raw_doc(store, stale.id)
    schedule_before = await store.redis.zscore(store.keys.of(stale.id).schedule, stale.id)
    changed = {**stale.doc, "attempts": 99}

    assert await record_in(store, stale, changed, 0) is False
    assert await save(store, stale, terminal(stale, "completed", "pending")) is False
    assert await store.schedule.extend([stale], LONG_LEASE) == [False]
    wrong = dataclasses.replace(current, token="not-the-token")
    assert await record_in(store, wrong, changed, 0) is False

    assert await raw_doc(store, stale.id) == before
    assert await store.redis.zscore(store.keys.of(stale.id).schedule, stale.id) == schedule_before
    assert await store.redis.hget(store.keys.of(stale.id).leases, stale.id) == current.token
    assert not await in_zset(store, store.keys.of(stale.id).outbox, stale.id)
    assert await counts(store) == {"pending": 1}


# -- ending --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "webhook_state"),
    [("completed", "pending"), ("error", "pending"), ("timeout", "none"), ("completed", "none")],
)
async def test_finish_moves_the_watch_to_its_terminal_state(
    store: Store, state: str, webhook_state: str
) -> None:
    await register(store)
    claimed = await claim_one(store)
    done = terminal(claimed, state, webhook_state)

    assert await save(store, claimed, done) is True

    k = store.keys
    assert await store.get(TENANT, claimed.id) == done
    assert not await in_zset(store, k.of(claimed.id).schedule, claimed.id)
    assert not await in_zset(store, k.of(claimed.id).index(TENANT, "pending"), claimed.id)
    assert await in_zset(store, k.of(claimed.id).index(TENANT, state), claimed.id)
    assert await in_zset(store, k.of(claimed.id).index(TENANT), claimed.id)
    assert await in_zset(store, k.of(claimed.id).expiry, claimed.id)
    queued = await in_zset(store, k.of(claimed.id).outbox, claimed.id)
    assert queued is (webhook_state == "pending")
    expected = {state: 1, "wh:pending": 1} if queued else {state: 1}
    assert await counts(store) == expected
    assert (await claim(store)).watches == []
    assert await save(store, claimed, done) is True  # a repeat (a lost reply) changes nothing
    assert await save(store, claimed, {**done, "attempts": 99}) is False  # fenced
    assert await counts(store) == expected


async def test_cancel_ends_a_pending_watch_and_fences_its_worker(store: Store) -> None:
    doc = await register(store)
    holder = await claim_one(store)

    cancelled = await store.cancel(TENANT, doc["id"])

    assert cancelled["state"] == "cancelled"
    assert cancelled["finished_at"] is not None
    assert cancelled["next_poll_at"] is None
    assert await store.get(TENANT, doc["id"]) == cancelled
    assert await counts(store) == {"cancelled": 1}
    k = store.keys
    assert not await in_zset(store, k.of(doc["id"]).schedule, doc["id"])
    assert not await in_zset(store, k.of(doc["id"]).index(TENANT, "pending"), doc["id"])
    assert await in_zset(store, k.of(doc["id"]).index(TENANT, "cancelled"), doc["id"])
    assert await in_zset(store, k.of(doc["id"]).expiry, doc["id"])
    assert not await in_zset(store, k.of(doc["id"]).outbox, doc["id"])
    assert (await claim(store)).watches == []
    assert await save(store, holder, terminal(holder, "completed", "pending")) is False
    assert await record_in(store, holder, holder.doc, 0) is False
    assert (await store.get(TENANT, doc["id"]))["state"] == "cancelled"
    assert await counts(store) == {"cancelled": 1}


async def test_cancel_of_an_ended_watch_conflicts(store: Store) -> None:
    await register(store)
    claimed = await claim_one(store)
    await save(store, claimed, terminal(claimed, "completed", "none"))

    with pytest.raises(WatchConflict) as raised:
        await store.cancel(TENANT, claimed.id)

    assert "completed" in str(raised.value)
    assert await counts(store) == {"completed": 1}


async def test_cancel_twice_conflicts_and_counts_once(store: Store) -> None:
    doc = await register(store)
    await store.cancel(TENANT, doc["id"])

    with pytest.raises(WatchConflict):
        await store.cancel(TENANT, doc["id"])

    assert await counts(store) == {"cancelled": 1}


async def test_cancel_of_another_tenants_or_unknown_watch_is_not_found(store: Store) -> None:
    doc = await register(store)

    with pytest.raises(WatchNotFound):
        await store.cancel("other", doc["id"])
    with pytest.raises(WatchNotFound):
        await store.cancel(TENANT, "w_000000000000nosuchwatch")

    assert (await store.get(TENANT, doc["id"]))["state"] == "pending"
    assert await counts(store) == {"pending": 1}


# -- retention -----------------------------------------------------------------------------


async def test_forget_expired_deletes_ended_watches_and_their_traces(store: Store) -> None:
    short = Store(
        store.redis,
        namespace=store.keys.namespace,
        partitions=store.keys.partitions,
        retention_seconds=0.001,
    )
    finished = await register(short)
    claimed = await claim_one(short)
    assert await save(short, claimed, terminal(claimed, "completed", "delivered"))
    await short.redis.hset(short.keys.of(finished["id"]).counts(TENANT), "wh:delivered", 1)
    cancelled = await register(short)
    await short.cancel(TENANT, cancelled["id"])
    kept = await register(short)
    k = short.keys
    await short.redis.rpush(k.deliveries(finished["id"]), json.dumps({"status_code": 500}))
    assert await counts(short) == {
        "pending": 1,
        "cancelled": 1,
        "completed": 1,
        "wh:delivered": 1,
    }

    forgotten = 0
    deadline = time.monotonic() + 2.0
    while forgotten < 2 and time.monotonic() < deadline:
        forgotten += await short.forget_expired()
        await asyncio.sleep(0.005)

    assert forgotten == 2
    for gone in (cancelled["id"], finished["id"]):
        assert await raw_doc(short, gone) is None
        assert not await in_zset(short, k.of(gone).index(TENANT), gone)
        assert not await in_zset(short, k.of(gone).expiry, gone)
        with pytest.raises(WatchNotFound):
            await short.get(TENANT, gone)
    assert not await in_zset(
        short, k.of(cancelled["id"]).index(TENANT, "cancelled"), cancelled["id"]
    )
    assert not await in_zset(short, k.of(finished["id"]).index(TENANT, "completed"), finished["id"])
    assert not await short.redis.exists(k.deliveries(finished["id"]))
    assert await counts(short) == {"pending": 1}
    assert await short.get(TENANT, kept["id"]) == kept
    assert [doc["id"] for doc in (await short.page(TENANT, None, 10, None)).docs] == [kept["id"]]
    assert await short.forget_expired() == 0
    assert await counts(short) == {"pending": 1}


async def test_forget_expired_keeps_watches_within_retention(store: Store) -> None:
    doc = await register(store)
    await store.cancel(TENANT, doc["id"])

    assert await store.forget_expired() == 0

    assert (await store.get(TENANT, doc["id"]))["state"] == "cancelled"
    assert await counts(store) == {"cancelled": 1}


async def test_retention_keeps_a_watch_until_its_webhook_settles(store: Store) -> None:
    """A finished watch whose webhook is still retried is not swept (item 18b of #8)."""
    short = Store(
        store.redis,
        namespace=store.keys.namespace,
        partitions=store.keys.partitions,
        retention_seconds=0.001,
    )
    await register(short)
    claimed = await claim_one(short)
    assert await save(short, claimed, terminal(claimed, "completed", "pending"))
    await asyncio.sleep(0.01)

    assert await short.forget_expired() == 0

    assert (await short.get(TENANT, claimed.id))["webhook"]["state"] == "pending"
    assert await counts(short) == {"completed": 1, "wh:pending": 1}
    recheck = await short.redis.zscore(short.keys.of(claimed.id).expiry, claimed.id)
    assert recheck > await short.server_time_ms() + 3_000_000  # looked at again in an hour


async def test_an_idempotency_key_whose_watch_was_swept_never_creates_another(
    store: Store,
) -> None:
    """Same key and body after retention must not give a second watch with 201 (item 18c)."""
    short = Store(
        store.redis,
        namespace=store.keys.namespace,
        partitions=store.keys.partitions,
        retention_seconds=0.001,
    )
    first = await register(short, idempotency_key="k1", fingerprint="f1")
    await short.cancel(TENANT, first["id"])
    await asyncio.sleep(0.01)
    assert await short.forget_expired() == 1

    with pytest.raises(IdempotencyKeyExpired) as raised:
        await short.register(TENANT, SPEC, 3600, idempotency_key="k1", fingerprint="f1")

    assert raised.value.watch_id == first["id"]
    assert await counts(short) == {}


async def test_registration_beyond_the_tenants_cap_is_refused(store: Store) -> None:
    capped = Store(
        store.redis,
        namespace=store.keys.namespace,
        partitions=store.keys.partitions,
        max_active_watches=2,
    )
    first = await register(capped, idempotency_key="k1", fingerprint="f1")
    await register(capped)

    with pytest.raises(TooManyWatches):
        await capped.register(TENANT, SPEC, 3600)
    again, created = await capped.register(
        TENANT, SPEC, 3600, idempotency_key="k1", fingerprint="f1"
    )
    assert (again["id"], created) == (first["id"], False)  # a replay is not a new watch
    await register(capped, tenant="other")  # the cap is per tenant
    await capped.cancel(TENANT, first["id"])
    await register(capped)  # room again
    assert await counts(capped) == {"pending": 2, "cancelled": 1}


async def test_watch_ids_take_their_time_from_redis(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API host whose clock is 10 minutes ahead still makes ids in Redis time (item 18d)."""
    monkeypatch.setattr(time, "time", lambda: 1e10)
    monkeypatch.setattr(time, "time_ns", lambda: 10**19)

    doc = await register(store)

    id_ms = int(doc["id"][2:14], 16)
    assert abs(id_ms - doc["created_at"]) < 1000


async def test_a_repeated_cancel_with_its_request_id_answers_the_same(store: Store) -> None:
    """A cancel sent again after a lost reply must not answer 409 (item 3 of #8)."""
    doc = await register(store)
    keys = store._end_keys(doc["id"], TENANT, WatchState.CANCELLED)
    args = [doc["id"], TENANT, store.retention_ms, "request-1", store.keys.events_prefix]
    cancel = store._scripts["cancel"]

    first = await cancel(keys=keys, args=args)
    again = await cancel(keys=keys, args=args)
    other = await cancel(keys=keys, args=[*args[:3], "request-2", store.keys.events_prefix])

    assert first == again and first[0] == "cancelled"
    assert other[0] == "conflict"
    assert await counts(store) == {"cancelled": 1}


async def test_a_save_repeated_after_a_lost_reply_reports_success(store: Store) -> None:
    """`write_while_held` may send a fenced write again: the watch is saved once and the second
    answer is a success too (not a lost lease), for a poll and for an end."""
    for _ in range(2):
        await register(store)
    first, second = (await claim(store)).watches
    now = await store.server_time_ms()
    polled = {**first.doc, "attempts": 1, "next_poll_at": now + 60_000}
    done = terminal(second, "completed", "pending")

    assert await store.save([(first, polled), (second, done)]) == [True, True]
    assert await store.save([(first, polled), (second, done)]) == [True, True]

    assert await counts(store) == {"pending": 1, "completed": 1, "wh:pending": 1}
    changed = {**polled, "attempts": 2}
    assert await store.save([(first, changed)]) == [False]  # another write: still fenced


async def test_a_recorded_poll_keeps_a_document_with_spaces_exactly(store: Store) -> None:
    """record.lua takes each poll as one "<id> <token> <due> <doc>" argument: the document
    (spaces, tabs, non-ASCII) is everything after the third space, byte for byte."""
    await register(store)
    claimed = await claim_one(store)
    doc = copy.deepcopy(claimed.doc)
    doc.update(attempts=1, last_error="HTTP 503: a b\tc é ✓", last_result=None)
    assert await record_in(store, claimed, doc, 60)

    stored = await store.get(TENANT, claimed.id)
    assert stored["last_error"] == "HTTP 503: a b\tc é ✓" and stored["attempts"] == 1
