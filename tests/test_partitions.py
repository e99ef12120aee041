"""Partitions (`VTW_PARTITIONS` > 1) against fakeredis, the real Redis and the Redis Cluster:
ids name their partition, every script call stays in one, and what spans a tenant (its list,
its counts, its limit) is exact across them. Rendezvous hashing of workers over partitions."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from service.domain import new_watch_id, partition_of
from service.errors import PartitionsMismatch, TooManyWatches
from service.store.keys import Keys
from service.store.queue import Claimed, LeasedQueue
from service.store.replication import Replication
from service.store.watches import Store
from tests.service_fixtures import delete_namespace
from worker.partitions import Assignment, PartitionPicker, owners

P = 4
TENANT = "acme"
SPEC: dict[str, Any] = {"status_url": "http://translate-1:5000/status", "webhook_url": None}


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> AsyncIterator[Store]:
    namespace = "p" + secrets.token_hex(6)
    replicas = 1 if isinstance(redis_client, RedisCluster) else 0
    try:
        yield Store(
            redis_client,
            namespace=namespace,
            partitions=P,
            replication=Replication(redis_client, replicas),
        )
    finally:
        await delete_namespace(redis_client, namespace)


async def claim_all(store: Store, token: str = "tok") -> list[Claimed]:
    claimed: list[Claimed] = []
    for p in range(P):
        claimed += (await store.schedule.claim(100, 30, token, partition=p)).watches
    return claimed


def test_an_id_names_its_partition_and_sorts_by_time() -> None:
    ids = [new_watch_id(1_700_000_000_000 + i, i % 7) for i in range(20)]
    assert [partition_of(i, 7) for i in ids] == [i % 7 for i in range(20)]
    assert ids == sorted(ids) and {len(i) for i in ids} == {30}
    assert partition_of("w_not-ours", 7) == 0 and partition_of(ids[3], 1) == 0
    assert Keys("ns", 1).parts[0].schedule == "vtw:{ns}:schedule"  # P = 1: the same names
    assert Keys("ns", 3).of(ids[2]).schedule == "vtw:{ns:2}:schedule"


async def test_watches_spread_and_every_call_stays_in_its_partition(store: Store) -> None:
    docs = [(await store.register(TENANT, SPEC, 3600))[0] for _ in range(24)]
    assert len({partition_of(d["id"], P) for d in docs}) > 1
    claimed = await claim_all(store)
    assert sorted(c.id for c in claimed) == sorted(d["id"] for d in docs)

    pending, ended = claimed[:12], claimed[12:]
    polls = []
    for c in pending:
        polls.append((c, {**c.doc, "attempts": 1, "next_poll_at": c.doc["created_at"] + 60_000}))
    for c in ended:
        done = {**c.doc, "state": "completed", "finished_at": c.doc["created_at"]}
        polls.append((c, {**done, "next_poll_at": None}))
    assert await store.save(polls) == [True] * 24
    assert await store.save(polls) == [True] * 24  # repeated after a lost reply: still once

    counts = await store.counts(TENANT)
    assert counts == {"pending": 12, "completed": 12}
    assert (await store.get(TENANT, pending[0].id))["attempts"] == 1
    backlog, _ = await store.due_backlog()
    assert backlog == 0


async def test_the_list_merges_the_partitions_newest_first(store: Store) -> None:
    ids = [(await store.register(TENANT, SPEC, 3600))[0]["id"] for _ in range(13)]
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.page(TENANT, None, 5, cursor)
        seen += [d["id"] for d in page.docs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids, reverse=True)


async def test_an_idempotency_key_keeps_its_partition_and_its_watch(store: Store) -> None:
    first, created = await store.register(TENANT, SPEC, 3600, idempotency_key="k", fingerprint="f")
    again, created_again = await store.register(
        TENANT, SPEC, 3600, idempotency_key="k", fingerprint="f"
    )
    assert created and not created_again and again["id"] == first["id"]
    assert store.keys.of(first["id"]) == store.keys.of_idempotency(TENANT, "k")


async def test_the_tenants_limit_counts_every_partition(store: Store) -> None:
    capped = Store(store.redis, namespace=store.keys.namespace, partitions=P, max_active_watches=6)
    for _ in range(6):
        await capped.register(TENANT, SPEC, 3600)
    for _ in range(4):  # whichever partition it would go to
        with pytest.raises(TooManyWatches):
            await capped.register(TENANT, SPEC, 3600)
    assert (await capped.counts(TENANT))["pending"] == 6


async def test_another_partition_count_is_refused_with_both_values(store: Store) -> None:
    await store.check_partitions()
    await store.check_partitions()  # the same count again: fine
    other = Store(store.redis, namespace=store.keys.namespace, partitions=P + 1)
    with pytest.raises(PartitionsMismatch) as raised:
        await other.check_partitions()
    assert f"VTW_PARTITIONS is {P + 1}" in str(raised.value)
    assert f"created with {P} partitions" in str(raised.value)


def test_rendezvous_moves_few_partitions_when_a_worker_joins_or_leaves() -> None:
    workers = [f"w{i}" for i in range(4)]
    before = owners(workers, 48)
    assert set(before) == set(workers)
    after = owners([*workers, "w4"], 48)
    moved = [p for p in range(48) if before[p] != after[p]]
    assert all(after[p] == "w4" for p in moved) and 4 <= len(moved) <= 20
    gone = owners(workers[1:], 48)
    assert all(gone[p] == before[p] for p in range(48) if before[p] != "w0")


class Heads:
    """A queue that only answers `heads` (what `PartitionPicker.help` reads)."""

    def __init__(self, heads: dict[int, float | None]) -> None:
        self._heads = heads
        self.reads = 0

    async def heads(self, partitions: list[int]) -> list[float | None]:
        self.reads += 1
        return [self._heads.get(p) for p in partitions]


def picker_of(own: set[int], partitions: int, heads: Heads | None = None) -> PartitionPicker:
    assignment = Assignment(None, partitions)
    assignment.own = frozenset(own)
    assignment.others = tuple(p for p in range(partitions) if p not in own)
    return PartitionPicker(assignment, cast(LeasedQueue, heads or Heads({})), nap_ms=50)


def test_the_picker_claims_its_own_partitions_due_soonest_first_and_probes_a_bounded_few() -> None:
    picker = picker_of({0, 1, 2, 3, 4, 5, 6, 7}, 16)
    now = 1_000_000
    first = [picker.pick(now) for _ in range(1)]
    assert first[0] in range(8)  # never probed: every own partition is worth a claim
    for p in range(8):
        picker.claimed(p, now, None, full=False)  # all empty
    assert picker.pick(now) is None
    assert picker.recheck_ms() == 100  # 8 own partitions, 4 probes per 50 ms nap
    assert picker.wait_ms(now) == 50
    picker.claimed(3, now, now + 20, full=False)  # 3's head is due in 20 ms
    assert picker.pick(now + 20) == 3
    picker.scheduled(5, now + 10)  # a save of ours made 5 due sooner
    assert picker.pick(now + 10) == 5
    picker.claimed(5, now + 10, now + 500, full=True)  # full: claim again at once
    assert picker.pick(now + 10) == 5


async def test_an_idle_picker_helps_the_most_overdue_others_at_most_once_a_second() -> None:
    now = 1_000_000
    heads = Heads({4: now - 5_000, 5: now - 200, 6: now - 9_000, 7: now - 3_000})
    picker = picker_of({0}, 8, heads)
    picker.claimed(0, now, None, full=False)
    await picker.help(now, clock_ms=0)
    assert heads.reads == 1
    assert picker.pick(now) == 4  # the two most overdue (6, 4), 5 is not late enough
    picker.claimed(4, now, None, full=False)  # came back short: no longer helped
    assert picker.pick(now) == 6
    picker.claimed(6, now, None, full=False)
    assert picker.pick(now) is None
    await picker.help(now, clock_ms=500)  # within a second: no read
    assert heads.reads == 1
