"""Review fixes of the worker, each against the real pieces (the store on fakeredis and on the
real Redis, the real `Poller` and claim loop, an upstream served on loopback):

1. a watch cancelled while a worker holds it is no lease lost (`vtwatch_leases_ended_total`,
   not `vtwatch_lease_lost_total`, whose alert says workers stall past their leases);
2. one slow host holds at most half of a worker's slots whatever `VTW_PER_HOST_CONCURRENCY`
   (the rule used to exist only while that limit was below `VTW_WORKER_CONCURRENCY`);
3. an adaptive watch whose upstream's learned durations are garbage in Redis is polled by the
   plain backoff rules (it used to stay pending, never polled, past its deadline);
4. a watch of `max_attempts` 1 keeps its one attempt for the deadline, so a job that ends
   before it completes (it used to end `timeout` at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from client.learned import upstream_key
from service.api.schemas import WatchCreate
from service.settings import Settings
from service.store.watches import Store
from tests.fakes import served, until
from worker.budget import GRANTED
from worker.poller import Poller
from worker.schedules import LearnedSchedules

from .test_store import TENANT, claim, claim_one
from .test_worker_units import OneSlowHostLoop, RecordingQueue

# The store on fakeredis and on the real Redis (the cluster's run is the contract suite's).
STORES = pytest.mark.parametrize("redis_client", ["fakeredis", "redis"], indirect=True)


def poller_settings(**values: Any) -> Settings:
    """Fast polls; the fleet-wide host budget out of the way."""
    return Settings.model_validate(
        {"min_poll_interval": 0.05, "host_rate_limit": 1000, "host_burst": 1000, **values}
    )


def new_poller(store: Store, session: aiohttp.ClientSession, **values: Any) -> Poller:
    """A poller whose every request the fleet-wide budget admits (these tests are not about
    it)."""
    poller = Poller(store, session, poller_settings(**values))
    poller.budget.spend_credit = lambda *args: GRANTED  # type: ignore[method-assign]
    return poller


def spec_of(url: str, **policy: Any) -> dict[str, Any]:
    return WatchCreate.model_validate({"status_url": url, "policy": policy}).spec()


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@dataclass
class HeldUpstream:
    """A status URL whose requests wait for `answer` to be set, then say `result`."""

    url: str = ""
    result: str = "pending"
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: int = 0


@pytest.fixture
async def held() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()

    async def status(request: web.Request) -> web.Response:
        upstream.arrived += 1
        await upstream.answer.wait()
        return web.json_response({"result": upstream.result})

    app = web.Application()
    app.router.add_get("/status", status)
    async with served(app) as base:
        upstream.url = f"{base}/status"
        yield upstream
        upstream.answer.set()


# -- 1. a cancel is no lease lost ----------------------------------------------------------------


@STORES
@pytest.mark.parametrize("keeper_first", [False, True], ids=["write-refused", "keeper-found"])
async def test_a_cancel_while_the_poller_holds_the_watch_is_an_ended_lease_not_a_lost_one(
    store: Store, held: HeldUpstream, keeper_first: bool
) -> None:
    """The poll is in flight when the watch is cancelled (as `DELETE /v1/watches/{id}` does);
    its write is refused by the fence, or the keeper finds the lease gone first: either way
    the watch ended, no other worker took it."""
    doc, _ = await store.register(TENANT, spec_of(held.url), 60)
    lost, ended = counter("vtwatch_lease_lost_total"), counter("vtwatch_leases_ended_total")
    async with aiohttp.ClientSession() as session:
        poller = new_poller(store, session)
        claimed = await claim_one(store)
        poller.sync_clock(await store.server_time_ms())
        poller.keeper.hold(claimed)
        handling = asyncio.create_task(poller._handle(claimed))
        await until(lambda: held.arrived == 1)

        cancelled = await store.cancel(TENANT, doc["id"])
        if keeper_first:
            await poller.keeper.extend_all()
            assert poller.keeper.taken(claimed)
        held.answer.set()
        await asyncio.wait_for(handling, 5)

    after = await store.get(TENANT, doc["id"])
    assert cancelled["state"] == after["state"] == "cancelled" and after["attempts"] == 0
    assert counter("vtwatch_lease_lost_total") == lost
    assert counter("vtwatch_leases_ended_total") == ended + 1
    assert not poller.keeper.held


@STORES
async def test_a_lease_taken_by_another_claim_is_still_a_lost_lease(
    store: Store, held: HeldUpstream
) -> None:
    """The other side of the fence: the lease lapsed and another worker claimed the watch."""
    doc, _ = await store.register(TENANT, spec_of(held.url), 60)
    lost, ended = counter("vtwatch_lease_lost_total"), counter("vtwatch_leases_ended_total")
    async with aiohttp.ClientSession() as session:
        poller = new_poller(store, session)
        claimed = await claim_one(store, lease_seconds=0.2)
        poller.sync_clock(await store.server_time_ms())
        poller.keeper.hold(claimed)
        handling = asyncio.create_task(poller._handle(claimed))
        await until(lambda: held.arrived == 1)

        taken: list[Any] = []

        async def claim_again() -> None:
            while not taken:
                taken.extend((await claim(store)).watches)
                await asyncio.sleep(0.02)

        await asyncio.wait_for(claim_again(), 5)
        held.answer.set()
        await asyncio.wait_for(handling, 5)

    assert [c.id for c in taken] == [doc["id"]]
    assert (await store.get(TENANT, doc["id"]))["attempts"] == 0  # the write was refused
    assert counter("vtwatch_lease_lost_total") == lost + 1
    assert counter("vtwatch_leases_ended_total") == ended


# -- 2. one slow host holds at most half the slots, whatever the per-host limit -----------------


@pytest.mark.parametrize("host_limit", [None, 8, 64])
async def test_one_slow_host_holds_half_the_slots_when_the_per_host_limit_cannot_bind(
    host_limit: int | None,
) -> None:
    queue = RecordingQueue()
    loop = OneSlowHostLoop(queue, concurrency=8, lease_seconds=30, host_limit=host_limit)
    claiming = asyncio.create_task(loop._claim_until_stopped())
    await until(lambda: len(queue.released) >= 10, seconds=5)
    loop.stop()
    await asyncio.wait_for(claiming, 1)

    assert loop.host_limits.users("slow.example") == len(loop.in_flight) == 4
    assert all(0.5 <= delay <= 1.5 for _, delay in queue.released)
    assert not any(loop.keeper.held.get(i) for i, _ in queue.released)
    await loop.drain(0)
    assert loop.host_limits.users("slow.example") == 0


@contextlib.asynccontextmanager
async def served_on(app: web.Application, host: str) -> AsyncIterator[str]:
    """`served`, on another loopback address (another host to the worker)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@STORES
async def test_a_hanging_host_leaves_a_healthy_host_of_the_same_worker_its_slots(
    store: Store, held: HeldUpstream
) -> None:
    """`VTW_WORKER_CONCURRENCY=8`, the per-host limit at its default (64): 24 watches of an
    upstream that never answers, then one of another host whose job has ended, 4 s deadline.
    The hanging host holds 4 slots; the healthy watch is polled at once and completes (before
    the fix the hanging host held all 8 slots for a request timeout: past the deadline)."""
    for _ in range(24):
        await store.register(TENANT, spec_of(held.url), 60)

    async def healthy(request: web.Request) -> web.Response:
        return web.json_response({"result": "completed"})

    app = web.Application()
    app.router.add_get("/status", healthy)
    async with served_on(app, "127.0.0.2") as other, aiohttp.ClientSession() as session:
        poller = new_poller(store, session, worker_concurrency=8)
        assert poller.settings.per_host_concurrency == 64
        running = asyncio.create_task(poller.run(grace_seconds=0))
        try:
            await until(lambda: held.arrived >= 4, seconds=5)
            doc, _ = await store.register(TENANT, spec_of(f"{other}/status", max_wait_time=4), 4)
            registered = time.monotonic()
            watch = doc
            while watch["state"] == "pending":
                assert time.monotonic() - registered < 4, "the healthy watch was not polled"
                await asyncio.sleep(0.02)
                watch = await store.get(TENANT, doc["id"])
            in_flight = held.arrived
        finally:
            poller.stop()
            await asyncio.wait_for(running, 5)

    assert watch["state"] == "completed" and watch["attempts"] == 1
    assert watch["last_polled_at"] - watch["created_at"] <= 1_500
    assert in_flight == 4  # the hanging host never held more than its share


# -- 3. unreadable learned durations mean the plain backoff ------------------------------------


@STORES
@pytest.mark.parametrize(
    "garbage",
    [{"1" * 5_000: "1"}, {"4": "1" * 5_000}, {"4": "nan"}, {"4": "-1"}],
    ids=["bin-of-5000-digits", "weight-of-5000-digits", "nan", "negative"],
)
async def test_an_adaptive_watch_of_an_upstream_with_garbage_durations_is_polled_and_completes(
    store: Store, garbage: dict[str, str]
) -> None:
    """The durations hash of the watch's upstream is corrupted; the job ends 0.5 s in, the
    deadline is 4 s: the watch is polled by the plain rules and completes in time."""
    requests: list[float] = []
    ends_at = time.monotonic() + 0.5

    async def status(request: web.Request) -> web.Response:
        requests.append(time.monotonic())
        done = time.monotonic() >= ends_at
        return web.json_response({"result": "completed" if done else "pending"})

    app = web.Application()
    app.router.add_get("/jobs/{id}/status", status)
    async with served(app) as base, aiohttp.ClientSession() as session:
        url = f"{base}/jobs/j1/status"
        key = store.keys.durations(upstream_key(url))
        await store.redis.hset(key, mapping={"scale": "1", **garbage})
        doc, _ = await store.register(TENANT, spec_of(url, max_wait_time=4), 4)
        poller = new_poller(store, session, lease_seconds=1)
        assert poller.specs.get(doc["spec"]).adaptive
        running = asyncio.create_task(poller.run(grace_seconds=0))
        try:
            watch = doc
            while watch["state"] == "pending":
                assert time.monotonic() < ends_at + 5, f"still pending: {watch}"
                await asyncio.sleep(0.02)
                watch = await store.get(TENANT, doc["id"])
        finally:
            poller.stop()
            await asyncio.wait_for(running, 5)

    assert watch["state"] == "completed", watch
    assert watch["finished_at"] < watch["deadline"]
    assert watch["attempts"] == len(requests) >= 1


@STORES
async def test_any_error_interpreting_learned_durations_means_no_planner(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only a `ConfigurationError`: whatever reading a histogram raises, its upstream's
    watches get no planner (the plain rules) rather than a failed poll."""
    upstream = "h.example/jobs/{id}/status"
    await store.redis.hset(store.keys.durations(upstream), mapping={"scale": "1", "4": "1"})

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    monkeypatch.setattr("worker.schedules.durations_of", broken)
    schedules = LearnedSchedules(store.durations, refresh_seconds=60)
    with caplog.at_level("WARNING", logger="worker.schedules"):
        assert await schedules.planner(upstream) is None
    assert "unreadable" in caplog.text and upstream in caplog.text


# -- 4. the one attempt of max_attempts 1 is kept for the deadline ----------------------------


@STORES
async def test_a_watch_of_one_attempt_polls_at_its_deadline_and_sees_the_job_completed(
    store: Store,
) -> None:
    """`max_attempts` 1, a 2 s deadline, a job that ends 0.5 s in: one request, at the
    deadline, and the watch ends `completed`."""
    requests: list[float] = []
    ends_at = time.monotonic() + 0.5

    async def status(request: web.Request) -> web.Response:
        requests.append(time.monotonic())
        done = time.monotonic() >= ends_at
        return web.json_response({"result": "completed" if done else "pending"})

    app = web.Application()
    app.router.add_get("/status", status)
    async with served(app) as base, aiohttp.ClientSession() as session:
        policy = {"max_wait_time": 2, "max_attempts": 1}
        doc, _ = await store.register(TENANT, spec_of(f"{base}/status", **policy), 2)
        registered = time.monotonic()
        poller = new_poller(store, session)
        running = asyncio.create_task(poller.run(grace_seconds=0))
        try:
            watch = doc
            while watch["state"] == "pending":
                assert time.monotonic() - registered < 5, f"still pending: {watch}"
                await asyncio.sleep(0.02)
                watch = await store.get(TENANT, doc["id"])
        finally:
            poller.stop()
            await asyncio.wait_for(running, 5)

    assert watch["state"] == "completed", watch
    assert watch["attempts"] == len(requests) == 1
    assert watch["last_polled_at"] >= watch["deadline"] - 50  # the one poll, at the deadline
    assert requests[0] - registered >= 1.9
