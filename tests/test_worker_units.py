"""The worker's pieces on their own (fakeredis and the real Redis where a store is needed): the
lease keeper, the claim loop's stop, polls that go wrong, specs and per-host keys."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from yarl import URL

from client.backoff import BackoffPolicy
from client.upstream import Observation
from service.api.schemas import WatchCreate
from service.domain import new_watch_id
from service.settings import Settings
from service.store.codec import pack, unpack
from service.store.keys import Keys
from service.store.outbox import Outbox
from service.store.queue import Claim, Claimed, LeasedQueue
from service.store.watches import Store
from worker.capped import CappedDict
from worker.dispatcher import Dispatcher
from worker.leases import LeaseKeeper
from worker.loop import ClaimLoop, WriteBatch
from worker.poller import Poller
from worker.spec import SPEC_OVERHEAD_BYTES, SpecCache, normalized_host, parsed_url

from .test_store import TENANT, claim, claim_one, register, save, terminal

SPEC = WatchCreate.model_validate({"status_url": "http://translate-1:5000/status"}).spec()


def settings(**values: Any) -> Settings:
    return Settings.model_validate(values)


# -- the lease keeper ------------------------------------------------------------------------


@pytest.mark.parametrize("redis_client", ["redis"], indirect=True)  # real-time: one store
async def test_the_keeper_holds_a_lease_far_past_its_period(store: Store) -> None:
    """A claimed watch waiting (say, for a host slot) keeps its lease while the keeper runs."""
    await register(store)
    claimed = await claim_one(store, lease_seconds=0.6)
    keeper = LeaseKeeper(store.schedule, 0.6, "test")
    keeper.hold(claimed)
    stop = asyncio.Event()
    running = asyncio.create_task(keeper.run(stop))

    await asyncio.sleep(2.4)  # four lease periods

    assert (await claim(store)).watches == []
    assert keeper.holds(claimed)
    assert await save(store, claimed, terminal(claimed, "completed", "none"))
    stop.set()
    await running


async def test_the_keeper_notices_a_lease_taken_by_another(store: Store) -> None:
    await register(store)
    claimed = await claim_one(store, lease_seconds=0.05)
    await asyncio.sleep(0.1)
    taken = await claim_one(store)
    keeper = LeaseKeeper(store.schedule, 30, "test")
    keeper.hold(claimed)

    await keeper.extend_all()

    assert not keeper.holds(claimed) and keeper.taken(claimed)  # dropped: no longer extended
    assert await store.redis.hget(store.keys.of(taken.id).leases, taken.id) == taken.token


# -- the claim loop --------------------------------------------------------------------------


class BlockedLoop(ClaimLoop):
    """Claims one item at a time and never finishes it."""

    name = "blocked"

    async def handle(self, claimed: Claimed) -> None:
        await asyncio.Event().wait()


class OneItemQueue(LeasedQueue):
    def __init__(self) -> None:
        self.claims = 0
        self.keys = Keys()

    async def claim(
        self,
        limit: int,
        lease_seconds: float,
        token: str,
        lost_token: str | None = None,
        partition: int = 0,
    ) -> Claim:
        self.claims += 1
        doc: Any = {"id": f"w{self.claims}"}
        return Claim(0, None, [Claimed(f"w{self.claims}", token, doc)])

    async def extend(self, items: list[Claimed], lease_seconds: float) -> list[bool]:
        return [True] * len(items)

    async def release(self, items: list[Claimed]) -> None:
        return None


async def test_stop_wakes_a_loop_waiting_for_a_free_slot() -> None:
    """Shutdown must not wait for a slot to free up before its grace period starts (item 6)."""
    loop = BlockedLoop(OneItemQueue(), concurrency=1, lease_seconds=30)
    claiming = asyncio.create_task(loop._claim_until_stopped())
    await asyncio.sleep(0.05)
    assert len(loop.in_flight) == 1  # the loop now waits for that slot

    started = time.monotonic()
    loop.stop()
    await asyncio.wait_for(claiming, 1)

    assert time.monotonic() - started < 0.5
    await loop.drain(0)


class RecordingQueue(OneItemQueue):
    def __init__(self) -> None:
        super().__init__()
        self.released: list[tuple[str, float]] = []

    async def release(self, items: list[Claimed], delay_seconds: float = 0.0) -> None:
        self.released += [(claimed.id, delay_seconds) for claimed in items]


class OneSlowHostLoop(ClaimLoop):
    name = "one-slow-host"

    async def handle(self, claimed: Claimed) -> None:
        async with self.host_slot("slow.example"):
            await asyncio.Event().wait()


async def test_one_slow_host_holds_at_most_half_the_slots() -> None:
    """Items beyond a host's share go back to the schedule for a moment instead of filling
    every slot (and starving every other host)."""
    queue = RecordingQueue()
    loop = OneSlowHostLoop(queue, concurrency=8, lease_seconds=30, host_limit=1)
    claiming = asyncio.create_task(loop._claim_until_stopped())
    await asyncio.sleep(0.3)
    loop.stop()
    await asyncio.wait_for(claiming, 1)

    assert loop.host_limits is not None and loop.host_limits.users("slow.example") == 4
    assert len(loop.in_flight) == 4
    assert queue.released and all(0.5 <= delay <= 1.5 for _, delay in queue.released)
    assert not any(loop.keeper.held.get(i) for i, _ in queue.released)
    await loop.drain(0)


class BatchQueue(RecordingQueue):
    """Every claim returns as many items as asked for."""

    async def claim(
        self,
        limit: int,
        lease_seconds: float,
        token: str,
        lost_token: str | None = None,
        partition: int = 0,
    ) -> Claim:
        items = []
        for _ in range(limit):
            self.claims += 1
            doc: Any = {"id": f"w{self.claims}"}
            items.append(Claimed(f"w{self.claims}", token, doc))
        return Claim(0, None, items)


class OneFastHostLoop(ClaimLoop):
    name = "one-fast-host"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most = 0

    async def handle(self, claimed: Claimed) -> None:
        async with self.host_slot("fast.example"):
            self.most = max(self.most, self.host_limits.users("fast.example"))
            await asyncio.sleep(0.002)


async def test_a_host_that_turns_its_slots_over_quickly_may_take_more_than_its_share() -> None:
    """A host whose polls answer in milliseconds is deferred only until its turnover is known
    (`TURNOVER_SECONDS`); then it uses every slot, instead of its items going back to the
    schedule and being claimed again (work the share rule would only churn)."""
    queue = BatchQueue()
    loop = OneFastHostLoop(queue, concurrency=8, lease_seconds=30)
    claiming = asyncio.create_task(loop._claim_until_stopped())
    await asyncio.sleep(1.5)
    released = len(queue.released)
    await asyncio.sleep(1.0)
    loop.stop()
    await asyncio.wait_for(claiming, 1)
    await loop.drain(1)

    assert released > 0  # at first: at most its share
    assert len(queue.released) == released  # once its turnover is known: no more deferrals
    assert loop.most > loop.host_share


class FailingQueue(OneItemQueue):
    """Every claim fails with an error a failover or a full Redis gives."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.tokens: list[tuple[str, str | None]] = []

    async def claim(
        self,
        limit: int,
        lease_seconds: float,
        token: str,
        lost_token: str | None = None,
        partition: int = 0,
    ) -> Claim:
        self.tokens.append((token, lost_token))
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        __import__("redis").exceptions.ReadOnlyError("READONLY You can't write against a replica"),
        __import__("redis").exceptions.OutOfMemoryError("OOM command not allowed"),
        __import__("redis").exceptions.ResponseError("BUSY Redis is busy running a script"),
        RuntimeError("a bug"),
    ],
)
async def test_a_loop_survives_any_claim_error_and_hands_the_token_back(error: Exception) -> None:
    queue = FailingQueue(error)
    loop = BlockedLoop(queue, concurrency=4, lease_seconds=30)
    claiming = asyncio.create_task(loop._claim_until_stopped())
    await asyncio.sleep(0.5)

    assert not claiming.done()
    assert len(queue.tokens) >= 2
    first, _ = queue.tokens[0]
    assert all(token == first and lost in (None, first) for token, lost in queue.tokens)
    assert queue.tokens[1][1] == first  # a claim that may have run is handed back
    loop.stop()
    await asyncio.wait_for(claiming, 5)


# -- polls that go wrong ---------------------------------------------------------------------


async def test_an_unexpected_error_in_a_poll_is_a_transient_failure_and_the_deadline_holds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Observation:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("worker.poller.fetch_status", broken)
    doc, _ = await store.register(TENANT, SPEC, 0.3)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, settings(min_poll_interval=0.05))
        first = await claim_one(store)
        poller.sync_clock(await store.server_time_ms())  # as the claim loop does
        poller.keeper.hold(first)
        await poller.handle(first)
        polled = await store.get(TENANT, doc["id"])
        assert polled["state"] == "pending" and polled["attempts"] == 1
        assert polled["last_error"] == "internal error while polling the upstream"

        deadline = time.monotonic() + 3
        while polled["state"] == "pending" and time.monotonic() < deadline:
            leased = await claim(store)
            for claimed in leased.watches:
                poller.keeper.hold(claimed)
                await poller.handle(claimed)
            polled = await store.get(TENANT, doc["id"])
            await asyncio.sleep(0.02)

    assert polled["state"] == "timeout" and polled["reason"] == "deadline reached"


async def test_an_outbox_entry_without_a_url_is_failed_not_claimed_for_ever(store: Store) -> None:
    await store.register(TENANT, SPEC, 3600)
    claimed = await claim_one(store)
    assert await save(store, claimed, terminal(claimed, "completed", "pending"))
    outbox = Outbox(store.redis, namespace=store.keys.namespace)
    async with aiohttp.ClientSession() as session:
        dispatcher = Dispatcher(outbox, session, settings())
        delivery = (await outbox.queue.claim(10, 30, "t1")).watches[0]
        dispatcher.keeper.hold(delivery)
        await dispatcher.handle(delivery)

    assert (await outbox.queue.claim(10, 30, "t2")).watches == []
    ended = await store.get(TENANT, claimed.id)
    assert ended["webhook"]["state"] == "failed"
    assert [a["error"] for a in await outbox.attempts(claimed.id)] == ["no webhook_url"]


# -- specs, hosts, floors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://translate.example/status",
        "http://TRANSLATE.example/status",
        "http://user:pw@translate.example/status",
        "http://translate.example:8080/status",
        "https://translate.example./jobs/1",
    ],
)
def test_a_per_host_limit_counts_one_host_however_the_url_spells_it(url: str) -> None:
    assert normalized_host(url) == "translate.example"


def test_ip_literals_have_one_host_key() -> None:
    assert normalized_host("http://[2001:DB8:0:0::1]:80/x") == normalized_host(
        "http://[2001:db8::1]/"
    )


def test_the_spec_cache_is_bounded_by_bytes() -> None:
    cache = SpecCache(min_poll_interval=1.0, budget_bytes=20_000)
    policy = {
        "initial_wait_time": 1.0,
        "backoff_factor": 2.0,
        "jitter": 0.5,
        "max_interval": 60,
        "max_attempts": None,
    }
    for i in range(200):
        spec = {
            "status_url": f"http://h{i}.example/s",
            "policy": policy,
            "metadata": {"x": "y" * 4000},
        }
        assert cache.get(json.dumps(spec)).host == f"h{i}.example"

    assert cache.size_bytes <= 20_000 and 1 <= len(cache) <= 5


def test_the_spec_cache_counts_what_a_small_spec_holds_beyond_its_text() -> None:
    cache = SpecCache(min_poll_interval=1.0, budget_bytes=20_000)
    for i in range(200):
        cache.get(json.dumps({"status_url": f"http://h{i}.example/s"}))
    assert len(cache) <= 20_000 // SPEC_OVERHEAD_BYTES


def test_a_status_url_that_does_not_parse_is_kept_as_text_for_the_request_to_fail() -> None:
    assert parsed_url("http://h.example/s") == URL("http://h.example/s")
    assert parsed_url("http://h.example:99999/s") == "http://h.example:99999/s"


def test_the_minimum_poll_interval_floors_every_delay_hints_and_deadline_included() -> None:
    policy = BackoffPolicy(initial_wait_time=0.05, jitter=0, min_delay=1.0)
    rng = random.Random(0)
    assert policy.next_delay(1, 100, rng) == 1.0
    assert policy.next_delay(1, 100, rng, retry_after=0.0) == 1.0
    assert policy.next_delay(1, 100, rng, eta_seconds=0.01) == 1.0
    assert policy.next_delay(1, 0.3, rng) == 1.0  # not a burst of polls just before the deadline
    assert policy.next_delay(1, 0.3, rng, last_attempt=True) == 1.0


def test_a_retention_shorter_than_the_webhook_schedule_is_refused() -> None:
    with pytest.raises(ValidationError, match="VTW_RETENTION_SECONDS"):
        settings(retention_seconds=3600)  # the default schedule runs ~27.6 h
    assert settings(retention_seconds=3600, webhook_retry_schedule="5,60").retention_seconds == 3600


async def test_vtwatch_dev_exits_non_zero_when_its_worker_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API whose watches nothing polls must not go on serving (item 4 of #8)."""
    from worker import dev

    async def dies(self: ClaimLoop, grace_seconds: float) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("a claim loop failed")

    monkeypatch.setattr(ClaimLoop, "run", dies)
    port = __import__("tests.e2e.procs", fromlist=["free_port"]).free_port()

    code = await asyncio.wait_for(dev.run_dev(settings(), "127.0.0.1", port), 10)

    assert code == 1


async def test_the_outbound_session_keeps_no_cookies_and_guards_every_connection() -> None:
    """A cookie one upstream sets is never sent on a later request to that host (another
    tenant's watch may poll it); a host outside the allowed networks is refused."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from worker.process import outbound_session

    cookies_seen: list[str | None] = []

    async def status(request: web.Request) -> web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        response = web.json_response({"result": "pending"})
        response.set_cookie("session", "tenant-a-secret")
        return response

    app = web.Application()
    app.router.add_get("/status", status)
    allowed = Settings(allowed_networks="127.0.0.0/8,::1/128")
    async with TestServer(app, host="127.0.0.1") as server:
        url = f"http://localhost:{server.port}/status"  # a name: jars keep no cookie of an IP
        async with outbound_session(allowed) as session:
            for _ in range(2):
                async with session.get(url) as response:
                    assert response.cookies["session"].value == "tenant-a-secret"
        assert cookies_seen == [None, None]
        async with outbound_session(Settings()) as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.get(url)


def test_the_ids_and_tokens_record_lua_splits_on_hold_no_space() -> None:
    """record.lua splits "<id> <token> <due> <doc>" at its first three spaces."""
    loop = OneSlowHostLoop(RecordingQueue(), concurrency=8, lease_seconds=30)
    tokens = [loop._next_token() for _ in range(3)]
    ids = [new_watch_id(now, partition) for now in (0, 2**47) for partition in (0, 4095)]
    assert not any(char.isspace() for value in [*ids, *tokens] for char in value)


async def test_writes_made_while_a_batch_is_in_flight_go_together_after_it() -> None:
    """Group commit: one send in flight at a time; the writes made meanwhile wait for it and go
    in the next send together (fewer round trips under load); a failed send fails its items
    only."""
    sent: list[list[int]] = []
    gate = asyncio.Event()

    async def send(items: list[int]) -> list[int]:
        sent.append(items)
        if items == [0]:
            await gate.wait()
        if 13 in items:
            raise RuntimeError("store down")
        return [item * 10 for item in items]

    batch: WriteBatch[int, int] = WriteBatch(send)
    first = asyncio.create_task(batch.add(0))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [[0]]
    meanwhile = [asyncio.create_task(batch.add(i)) for i in (1, 2, 3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [[0]]  # still one send in flight
    gate.set()
    assert await first == 0
    assert await asyncio.gather(*meanwhile) == [10, 20, 30]
    assert sent == [[0], [1, 2, 3]]

    failing = asyncio.create_task(batch.add(13))
    behind = asyncio.create_task(batch.add(5))  # the same turn: the same (failing) send
    with pytest.raises(RuntimeError):
        await failing
    with pytest.raises(RuntimeError):
        await behind
    assert await batch.add(4) == 40  # the next batch is not hurt


@pytest.mark.parametrize(
    ("doc", "stored"),
    [
        ({"id": "w", "attempts": 0, "reason": None, "progress": 0.0}, {"id": "w", "progress": 0.0}),
        ({"id": "w", "webhook": {"state": "none"}}, {"id": "w"}),
        ({"id": "w", "webhook": {"state": "none", "attempts": 0}}, {"id": "w"}),
        (
            {"id": "w", "webhook": {"state": "pending", "attempts": 0}},
            {"id": "w", "webhook": {"state": "pending"}},
        ),
        ({"id": "w", "webhook": {}}, {"id": "w"}),
    ],
)
def test_a_packed_document_leaves_out_defaults_and_never_an_empty_webhook(
    doc: dict[str, Any], stored: dict[str, Any]
) -> None:
    """The Lua scripts read a missing webhook as the defaults; an empty one would read as nil."""
    assert json.loads(pack(doc)) == stored
    assert unpack(pack(doc))["webhook"]["state"] == doc.get("webhook", {}).get("state", "none")


def test_ids_are_grouped_by_partition_in_order_of_first_appearance() -> None:
    keys = Keys("vtw", 4)
    ids = [new_watch_id(0, p) for p in (2, 0, 2, 3, 0)]
    grouped = keys.group(ids)
    assert [(part.number, indexes) for part, indexes in grouped.items()] == [
        (2, [0, 2]),
        (0, [1, 4]),
        (3, [3]),
    ]
    assert all(part is keys.of(ids[indexes[0]]) for part, indexes in grouped.items())
    assert Keys("vtw", 1).group(ids) == {Keys("vtw", 1).parts[0]: [0, 1, 2, 3, 4]}


def test_a_capped_dict_forgets_everything_when_a_new_key_would_pass_its_cap() -> None:
    noted: CappedDict[str, int] = CappedDict(2)
    noted["a"], noted["b"] = 1, 2
    noted["a"] = 3  # a key already held is updated in place
    assert noted == {"a": 3, "b": 2}
    noted["c"] = 4
    assert noted == {"c": 4}
    assert len(noted) <= noted.max_size
