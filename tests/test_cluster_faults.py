"""Faults of a Redis Cluster and of replication, on real servers.

* A partition's hash slot migrated by hand while the store works on it: ASK and TRYAGAIN while
  it moves, MOVED after; every operation succeeds (after a bounded retry), nothing is lost or
  doubled, and a promised write's WAIT goes to the node that ran it. A migration stuck longer
  than the retry budget fails the call (the API answers 503) and writes nothing.
* WAIT (one real replica): the writes that promise something to a caller wait for it, the
  others do not; a write no replica acknowledged in time is still answered, and counted.
* The worker roster: a worker that stops beating is dropped after the TTL, its partitions
  taken by the live workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisError

import worker.partitions as partitions_module
from service.domain import WatchDoc
from service.metrics import REPLICA_WAIT_SHORT
from service.settings import Settings
from service.store.keys import Keys, Partition
from service.store.outbox import Outbox
from service.store.queue import Claimed
from service.store.replication import Replication
from service.store.roster import Roster
from service.store.watches import Store
from tests.fakes import until
from tests.redis_cluster import LocalCluster, _free_ports, redis_server, replicas_in_sync
from tests.service_fixtures import (
    ApiFactory,
    cluster_client,
    delete_namespace,
    real_redis_or_skip,
)
from tests.test_store import SPEC, TENANT, terminal

pytestmark = pytest.mark.timeout(60)
P = 2  # partitions; the tests work in partition 0


def node(port: int) -> aioredis.Redis:
    return aioredis.Redis(port=port, decode_responses=True, socket_timeout=5)


async def error_counts(port: int) -> dict[str, int]:
    """The node's error replies so far, by kind (ASK, TRYAGAIN, MOVED...)."""
    async with node(port) as client:
        stats = await client.info("errorstats")
    return {name.removeprefix("errorstat_"): int(v["count"]) for name, v in stats.items()}


async def wait_calls(port: int, command: str = "wait") -> int:
    """WAIT (or `command`) commands the node has run so far."""
    async with node(port) as client:
        stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- a slot migrated by hand ---------------------------------------------------------------


class SlotMove:
    """Moves one hash slot from master `src` to master `dst` as `redis-cli --cluster reshard`
    does: IMPORTING on dst, MIGRATING on src, the keys in batches (MIGRATE), then the new owner
    on every master (dst first, which bumps its epoch, then src, then the others)."""

    def __init__(self, slot: int, src: int, dst: int, masters: list[int]) -> None:
        self.slot, self.src, self.dst, self.masters = slot, src, dst, masters
        self.began = self.done = False

    async def begin(self) -> None:
        async with node(self.src) as src, node(self.dst) as dst:
            src_id = await src.execute_command("CLUSTER MYID")
            dst_id = await dst.execute_command("CLUSTER MYID")
            await dst.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", src_id)
            await src.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", dst_id)
        self.began = True

    async def move(self, keys: list[str]) -> None:
        async with node(self.src) as src:
            await src.execute_command("MIGRATE", "127.0.0.1", self.dst, "", 0, 5000, "KEYS", *keys)

    async def finish(self) -> None:
        """The keys left (a batch at a time), then the slot's new owner everywhere."""
        async with node(self.src) as src:
            while keys := await src.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 100):
                await self.move(keys)
        async with node(self.dst) as dst:
            dst_id = await dst.execute_command("CLUSTER MYID")
        order = [self.dst, self.src, *(p for p in self.masters if p not in (self.src, self.dst))]
        for port in order:
            async with node(port) as client:
                await client.execute_command("CLUSTER SETSLOT", self.slot, "NODE", dst_id)
        self.done = True

    async def keys_on(self, port: int) -> int:
        async with node(port) as client:
            return int(await client.execute_command("CLUSTER COUNTKEYSINSLOT", self.slot))


@dataclass
class Migrating:
    store: Store
    stale: aioredis.Redis  # another client of the cluster, its slot map read before the move
    part: Partition
    move: SlotMove

    def keys(self) -> Iterator[str]:
        """Idempotency keys whose registrations land in partition 0 (the slot that moves)."""
        for i in itertools.count():
            key = f"key-{i}"
            if self.store.keys.of_idempotency(TENANT, key).number == self.part.number:
                yield key


@pytest.fixture
async def migrating(cluster: LocalCluster) -> AsyncIterator[Migrating]:
    """A store (P = 2, promised writes wait for 1 replica, as the service on a cluster) and the
    move of its partition 0's slot to another master; the slot is moved back afterwards."""
    client = cluster_client(cluster.url)
    await client.initialize()
    namespace = "mig" + secrets.token_hex(4)
    store = Store(client, namespace=namespace, partitions=P, replication=Replication(client, 1))
    part = store.keys.parts[0]
    src = client.get_node_from_key(part.schedule).port
    masters = cluster.masters()
    dst = next(port for port in masters if port != src)
    move = SlotMove(key_slot(part.schedule.encode()), src, dst, masters)
    for master in (src, dst):  # a cluster just made syncs its replicas for a few seconds
        deadline = time.monotonic() + 20
        while not replicas_in_sync(master):
            assert time.monotonic() < deadline, f"the replica of {master} is not up"
            await asyncio.sleep(0.05)
    stale = cluster_client(cluster.url)
    await stale.initialize()
    try:
        yield Migrating(store, stale, part, move)
    finally:
        await stale.aclose()
        if move.began and not move.done:
            await move.finish()
        if move.done:  # home again, for the other tests of the session's cluster
            back = SlotMove(move.slot, dst, src, masters)
            await back.begin()
            await back.finish()
        await delete_namespace(client, namespace)
        await client.aclose()


async def register(store: Store, key: str) -> WatchDoc:
    doc, created = await store.register(TENANT, SPEC, 3600, idempotency_key=key)
    assert created
    return doc


def polled(claimed: Claimed, due_ms: int) -> WatchDoc:
    doc = copy.deepcopy(claimed.doc)
    doc["attempts"] += 1
    doc["next_poll_at"] = due_ms
    return doc


async def test_a_partition_keeps_working_while_its_slot_migrates_and_after(
    migrating: Migrating,
) -> None:
    store, part, move = migrating.store, migrating.part, migrating.move
    keys = migrating.keys()
    first = [await register(store, next(keys)) for _ in range(3)]
    leased = (await store.schedule.claim(2, 30, "t1", partition=0)).watches
    assert len(leased) == 2
    src_errors = await error_counts(move.src)

    await move.begin()
    await move.move([part.watch(doc["id"]) for doc in first])  # batch 1: the documents
    # A read of a moved key is redirected (ASK); a claim whose keys are all still here runs.
    assert (await store.get(TENANT, leased[1].id))["id"] == leased[1].id
    third = (await store.schedule.claim(10, 30, "t2", partition=0)).watches
    assert [c.id for c in third] == [
        d["id"] for d in first if d["id"] not in {c.id for c in leased}
    ]

    # A registration and a save name keys on both nodes: TRYAGAIN until the keys left move.
    async def finish_once_refused() -> None:
        before = src_errors.get("TRYAGAIN", 0)
        deadline = time.monotonic() + 5
        while (await error_counts(move.src)).get("TRYAGAIN", 0) == before:
            assert time.monotonic() < deadline, "no call was refused with TRYAGAIN"
            await asyncio.sleep(0.005)
        await move.finish()  # batch 2: the rest, then the slot's owner everywhere

    dst_waits = await wait_calls(move.dst)
    now = await store.server_time_ms()
    fourth_key = next(keys)
    (fourth, created), saved, _ = await asyncio.gather(
        store.register(TENANT, SPEC, 3600, idempotency_key=fourth_key),
        store.save([(leased[0], polled(leased[0], now + 60_000))]),
        finish_once_refused(),
    )
    assert created and saved == [True]
    errors = await error_counts(move.src)
    assert errors.get("ASK", 0) > src_errors.get("ASK", 0)
    assert errors.get("TRYAGAIN", 0) > src_errors.get("TRYAGAIN", 0)
    # The registration's WAIT went with it to the node that ran it (not to the old owner).
    assert await wait_calls(move.dst) > dst_waits

    # After: a client with the old slot map is redirected (MOVED), its WAIT with the write.
    stale = migrating.stale
    assert stale.get_node_from_key(part.schedule).port == move.src
    late = Store(
        stale, namespace=store.keys.namespace, partitions=P, replication=Replication(stale, 1)
    )
    # A promised write as the stale client's first call there: MOVED, followed with its WAIT.
    outbox = Outbox(
        stale, namespace=late.keys.namespace, partitions=P, replication=late.replication
    )
    dst_waits, dst_askings = await wait_calls(move.dst), await wait_calls(move.dst, "asking")
    moved = (await error_counts(move.src)).get("MOVED", 0)
    assert (await outbox.queue.claim(10, 30, "o1", partition=0)).watches == []
    assert (await error_counts(move.src)).get("MOVED", 0) > moved
    assert await wait_calls(move.dst) - dst_waits == 1
    assert await wait_calls(move.dst, "asking") == dst_askings  # a MOVED is no ASK
    dst_waits = await wait_calls(move.dst)
    fifth = await register(late, next(keys))
    assert await wait_calls(move.dst) - dst_waits == 1
    assert (await late.get(TENANT, fifth["id"]))["id"] == fifth["id"]
    due = (await late.schedule.claim(10, 30, "t3", partition=0)).watches
    assert sorted(c.id for c in due) == sorted([fourth["id"], fifth["id"]])
    assert await late.save([(c, polled(c, now + 60_000)) for c in due]) == [True, True]
    assert (await error_counts(move.src)).get("MOVED", 0) > errors.get("MOVED", 0)

    # Nothing lost, nothing doubled: five watches, each once, all on the new owner.
    ids = sorted(d["id"] for d in [*first, fourth, fifth])
    assert sorted(await store.redis.zrange(part.schedule, 0, -1)) == ids
    assert sorted(await store.redis.zrange(part.index(TENANT), 0, -1)) == ids
    assert await store.counts(TENANT) == {"pending": 5}
    again, created = await store.register(TENANT, SPEC, 3600, idempotency_key=fourth_key)
    assert not created and again["id"] == fourth["id"]
    assert (await store.get(TENANT, leased[0].id))["attempts"] == 1  # saved while it moved
    assert await move.keys_on(move.src) == 0 and await move.keys_on(move.dst) > 0


async def test_a_redirect_to_a_node_the_slot_map_omits_adds_it(cluster: LocalCluster) -> None:
    """A new master holds no slot until the first one moves to it, so the slot map read before
    leaves it out: a redirect there must reach it, not fail every try."""
    client = cluster_client(cluster.url)
    try:
        await client.initialize()
        known = client.get_node_from_key("{p0}x")
        assert known is not None
        unseen = _free_ports(1)[0]

        named = Replication._named(client, AskError(f"42 127.0.0.1:{unseen}"), known)
        again = Replication._named(client, MovedError(f"42 :{unseen}"), known)  # no host: known's

        assert (named.host, named.port) == ("127.0.0.1", unseen)
        assert client.get_node(host="127.0.0.1", port=unseen) is named is again
    finally:
        await client.aclose()


async def test_a_migration_stuck_past_the_retry_budget_fails_the_call_and_writes_nothing(
    migrating: Migrating,
) -> None:
    store, move = migrating.store, migrating.move
    keys = migrating.keys()
    await register(store, next(keys))
    (claimed,) = (await store.schedule.claim(10, 30, "t1", partition=0)).watches
    await move.begin()  # and no key moves: a call that names a key not there yet is refused

    key = next(keys)
    now = await store.server_time_ms()
    started = time.monotonic()
    outcomes = await asyncio.gather(
        store.register(TENANT, SPEC, 3600, idempotency_key=key),
        store.save([(claimed, polled(claimed, now + 60_000))]),
        return_exceptions=True,
    )
    # A Redis error, which the API answers with a 503 and a worker backs off from.
    assert [isinstance(outcome, RedisError) for outcome in outcomes] == [True, True], outcomes
    assert time.monotonic() - started < 5
    assert await store.counts(TENANT) == {"pending": 1}
    assert (await store.get(TENANT, claimed.id))["attempts"] == 0

    await move.finish()
    await register(store, key)  # tried again: created, once
    assert await store.save([(claimed, polled(claimed, now + 60_000))]) == [True]
    assert await store.counts(TENANT) == {"pending": 2}
    assert (await store.get(TENANT, claimed.id))["attempts"] == 1


async def test_a_promised_write_whose_keys_all_moved_follows_ask_with_its_wait(
    migrating: Migrating,
) -> None:
    """Every key of the slot moved, the slot not yet handed over: the old owner answers ASK to
    an outbox claim (a promised write); it runs once on the new owner after ASKING, its WAIT on
    the same connection there."""
    store, move = migrating.store, migrating.move
    outbox = Outbox(
        store.redis,
        namespace=store.keys.namespace,
        partitions=P,
        replication=Replication(store.redis, 1),
    )
    watch = await register(store, next(migrating.keys()))
    (claimed,) = (await store.schedule.claim(10, 30, "t1", partition=0)).watches
    assert claimed.id == watch["id"]
    assert await store.save([(claimed, terminal(claimed, "completed", "pending"))]) == [True]
    # A lease that lapses: the claim's two keys (queue, leases) both exist, so the new owner
    # runs it after ASKING (a missing key there would be TRYAGAIN until the slot is handed over).
    assert len((await outbox.queue.claim(10, 0.05, "d0", partition=0)).watches) == 1
    await asyncio.sleep(0.1)
    await move.begin()
    async with node(move.src) as src:
        while batch := await src.execute_command("CLUSTER GETKEYSINSLOT", move.slot, 100):
            await move.move(batch)
    asks, dst_waits = (await error_counts(move.src)).get("ASK", 0), await wait_calls(move.dst)

    deliveries = (await outbox.queue.claim(10, 30, "d1", partition=0)).watches

    assert [d.id for d in deliveries] == [watch["id"]]
    assert (await error_counts(move.src)).get("ASK", 0) > asks
    assert await wait_calls(move.dst) - dst_waits == 1
    assert (await outbox.queue.claim(10, 30, "d2", partition=0)).watches == []  # leased once


# -- WAIT, on a Redis with one real replica --------------------------------------------------


@dataclass
class Replicated:
    master: int
    replica: int
    replica_process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    """A Redis master and its one replica, on free loopback ports, for this module only."""
    if shutil.which("redis-server") is None:
        pytest.skip("no replication tests: redis-server not installed")
    root = tmp_path_factory.mktemp("replicated")
    master, replica = _free_ports(2)
    processes = [redis_server(master, root / "master", "--repl-diskless-sync-delay", "0")]
    processes.append(
        redis_server(replica, root / "replica", "--replicaof", "127.0.0.1", str(master))
    )
    try:
        deadline = time.monotonic() + 20
        while not replicas_in_sync(master):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica did not come online ({root})")
            time.sleep(0.05)
        yield Replicated(master, replica, processes[1])
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def post(api: httpx.AsyncClient, body: Any, responses: list[httpx.Response]) -> None:
    responses.append(await api.post("/v1/watches", json=body))


async def test_only_the_promising_writes_wait_for_a_replica(
    replicated: Replicated, make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = "wait" + secrets.token_hex(4)
    monkeypatch.setenv("VTW_NAMESPACE", namespace)
    monkeypatch.setenv("VTW_REDIS_WAIT_REPLICAS", "1")
    settings = Settings()
    client = node(replicated.master)
    replication = Replication(client, settings.wait_replicas, settings.wait_timeout_ms)
    store = Store(client, namespace=namespace, replication=replication)
    outbox = Outbox(client, namespace=namespace, replication=replication)
    api = await make_api(settings, redis=node(replicated.master))

    async def waits(step: Any) -> int:
        before = await wait_calls(replicated.master)
        await step
        return await wait_calls(replicated.master) - before

    try:
        await store.register(TENANT, SPEC, 3600)  # the script loaded (NOSCRIPT: a second try)
        assert await waits(store.register(TENANT, SPEC, 3600)) == 1
        body = {"status_url": SPEC["status_url"]}
        posted: list[httpx.Response] = []
        assert await waits(post(api, body, posted)) == 1 and posted[0].status_code == 201

        claim = await store.schedule.claim(10, 30, "t1")
        mine = [c for c in claim.watches if c.doc["tenant"] == TENANT]
        assert await waits(store.schedule.claim(10, 30, "t2")) == 0  # a claim promises nothing
        assert await waits(store.schedule.extend(mine, 60)) == 0
        now = await store.server_time_ms()
        assert await waits(store.save([(mine[0], polled(mine[0], now))])) == 0
        (again,) = (await store.schedule.claim(10, 30, "t3")).watches
        ended = terminal(again, "completed", "pending")
        assert await waits(store.save([(again, ended)])) == 0  # ended: its webhook queued

        # The outbox's claim waits (a lease lost in a failover would let a second dispatcher
        # send the same webhook); a retry does not; a delivery marked delivered does.
        deliveries: list[Claimed] = []

        async def lease() -> None:
            deliveries[:] = (await outbox.queue.claim(10, 30, secrets.token_hex(4))).watches

        assert await waits(lease()) == 1 and len(deliveries) == 1
        failed = {"status_code": 500, "error": "HTTP 500", "latency_ms": 3}
        assert await waits(outbox.record_attempt(deliveries[0], failed, "retry")) == 0
        assert await waits(lease()) == 1 and len(deliveries) == 1
        ok = {"status_code": 204, "error": None, "latency_ms": 3}
        assert await waits(outbox.record_attempt(deliveries[0], ok, "delivered")) == 1
        counts = {name: n for name, n in (await store.counts(TENANT)).items() if n}
        assert counts == {"pending": 1, "completed": 1, "wh:delivered": 1}
    finally:
        await delete_namespace(client, namespace)
        await client.aclose()


async def test_a_promised_write_no_replica_acknowledges_in_time_is_answered_and_counted(
    replicated: Replicated, make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = "nowait" + secrets.token_hex(4)
    monkeypatch.setenv("VTW_NAMESPACE", namespace)
    monkeypatch.setenv("VTW_REDIS_WAIT_REPLICAS", "1")
    monkeypatch.setenv("VTW_REDIS_WAIT_TIMEOUT", "0.2")
    api = await make_api(Settings(), redis=node(replicated.master))
    short = REPLICA_WAIT_SHORT._value.get()
    replicated.replica_process.send_signal(signal.SIGSTOP)  # it acknowledges nothing now
    try:
        started = time.monotonic()
        response = await api.post("/v1/watches", json={"status_url": SPEC["status_url"]})
        elapsed = time.monotonic() - started
    finally:
        replicated.replica_process.send_signal(signal.SIGCONT)
    # Answered after the timeout: the write is on the master, the shortfall counted.
    assert response.status_code == 201 and elapsed >= 0.2
    assert REPLICA_WAIT_SHORT._value.get() - short == 1
    watch_id = response.json()["id"]
    assert (await api.get(f"/v1/watches/{watch_id}")).status_code == 200
    key = Keys(namespace).watch(watch_id)
    async with node(replicated.replica) as replica:  # and on the replica a moment later
        deadline = time.monotonic() + 5
        while not await replica.exists(key):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    async with node(replicated.master) as client:
        await delete_namespace(client, namespace)


# -- the roster -------------------------------------------------------------------------------

BEAT = 0.05
TTL = 0.6


async def test_a_silent_worker_is_dropped_after_the_ttl_and_the_others_take_its_partitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partitions_module, "BEAT_SECONDS", BEAT)
    monkeypatch.setattr(partitions_module, "ROSTER_TTL_SECONDS", TTL)
    client = await real_redis_or_skip(decode_responses=True)
    keys, partitions = Keys("roster" + secrets.token_hex(4), 12), 12
    workers = [partitions_module.Assignment(Roster(client, keys), partitions) for _ in range(3)]
    stops = [asyncio.Event() for _ in workers]
    tasks = [asyncio.create_task(w.run(stop)) for w, stop in zip(workers, stops, strict=True)]
    everything = frozenset(range(partitions))

    def shared(among: list[partitions_module.Assignment]) -> bool:
        expected = partitions_module.owners(sorted(w.worker_id for w in among), partitions)
        return all(
            w.own == {p for p, owner in enumerate(expected) if owner == w.worker_id} for w in among
        )

    try:
        await until(lambda: shared(workers))
        before = {w.worker_id: w.own for w in workers}
        assert all(before.values()) and frozenset().union(*before.values()) == everything
        silent, live = workers[1], [workers[0], workers[2]]
        tasks[1].cancel()  # it stops beating, and does not leave (a crash)
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[1]
        stopped = time.monotonic()

        await asyncio.sleep(2 * BEAT)  # within the TTL it is still counted live
        assert all(w.own == before[w.worker_id] for w in live)
        await until(lambda: shared(live))
        # Dropped no sooner than a TTL after its last beat (at most a beat before it stopped).
        assert time.monotonic() - stopped >= TTL - BEAT
        assert set(await client.zrange(keys.workers, 0, -1)) == {w.worker_id for w in live}
        for w in live:  # each keeps its own and takes some of the silent one's
            assert before[w.worker_id] <= w.own
        assert live[0].own | live[1].own == everything and not live[0].own & live[1].own
        assert (live[0].own | live[1].own) - before[live[0].worker_id] - before[
            live[1].worker_id
        ] == before[silent.worker_id]

        stops[0].set()  # a worker that stops cleanly leaves at once
        await tasks[0]
        assert await client.zrange(keys.workers, 0, -1) == [workers[2].worker_id]
    finally:
        for stop in stops:
            stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.delete(keys.workers)
        await client.aclose()
