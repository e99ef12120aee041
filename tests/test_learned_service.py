"""Learned schedules in the watch service (issue 11, item 3).

The Lua side (`service/store/lua/durations_record.lua` through
`service.store.durations.DurationBook`) runs against fakeredis and against a real Redis, like the
store's contract suite; then the worker's cache of planners, and the poller scheduling adaptive
and non-adaptive watches.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from client.backoff import next_poll_delay
from client.errors import ConfigurationError
from client.learned import DurationHistogram, LearnedSchedule, spread, upstream_key
from client.upstream import Observation, Status
from service.api.schemas import WatchCreate
from service.settings import Settings
from service.store.durations import SCALE, DurationBook, durations_of
from service.store.watches import Store
from tests.fakes import served
from worker.poller import Poller, advance
from worker.schedules import LearnedSchedules
from worker.spec import SpecCache

from .test_store import TENANT, claim

PENDING = Observation(Status.PENDING, 200)
JOB_SECONDS = 10.0  # the trained upstream's jobs all end within 9.5-10.5 s


@pytest.fixture
def book(store: Store) -> DurationBook:
    """The store's duration scripts (the store fixture deletes the upstream keys too)."""
    return store.durations


def new_upstream() -> str:
    return f"up-{secrets.token_hex(4)}.example/jobs/{{id}}/status"


async def record(book: DurationBook, upstream: str, samples: list[tuple[float, float]]) -> int:
    script, keys, args = book.record_call(upstream, samples)
    return int(await script(keys=keys, args=args))


async def stored(book: DurationBook, upstream: str) -> DurationHistogram | None:
    (fields,) = await book.read([upstream])
    return durations_of(fields, book.half_life)


def samples(count: int, seed: int = 0) -> list[tuple[float, float]]:
    """Jobs of 1-100 s, each seen to end within an interval of up to 5 s."""
    rng = random.Random(seed)
    ends = [10 ** rng.uniform(0, 2) for _ in range(count)]
    return [(max(0.0, end - rng.uniform(0, 5)), end) for end in ends]


def assert_same(found: DurationHistogram | None, expected: DurationHistogram) -> None:
    assert found is not None
    for got, want in zip(found.weights, expected.weights, strict=True):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-5)


# -- the Lua record ----------------------------------------------------------------------------


async def test_recorded_samples_read_back_as_the_clients_histogram(book: DurationBook) -> None:
    """One home for the math: what the script keeps is what `DurationHistogram.add` holds."""
    upstream, jobs = new_upstream(), samples(150)
    expected = DurationHistogram()
    for ended_after, ended_by in jobs:
        expected.add(ended_after, ended_by)

    assert await record(book, upstream, jobs[:50]) == 50  # a batch of one save
    for job in jobs[50:]:
        await record(book, upstream, [job])  # or one by one

    assert_same(await stored(book, upstream), expected)


async def test_renormalizing_keeps_the_histogram_and_drops_what_no_longer_weighs(
    store: Store, book: DurationBook
) -> None:
    """A short half-life makes the scale pass its bound every ~30 samples."""
    fast = DurationBook(store.redis, store.keys, 3600, half_life=1.0)
    upstream, expected = new_upstream(), DurationHistogram(half_life=1.0)
    for ended_after, ended_by in samples(100):
        expected.add(ended_after, ended_by)
        await record(fast, upstream, [(ended_after, ended_by)])

    fields = await store.redis.hgetall(store.keys.durations(upstream))
    assert float(fields[SCALE]) < 1e9
    touched = {i for job in samples(100) for i, _ in spread(*job)}
    assert len(fields) - 2 < len(touched)  # the bins of old samples went
    assert_same(await stored(fast, upstream), expected)


async def test_workers_recording_at_once_lose_no_sample(store: Store, book: DurationBook) -> None:
    upstream = new_upstream()
    calls = [book.record_call(upstream, [(9.5, 10.5)]) for _ in range(60)]

    await asyncio.gather(*(script(keys=keys, args=args) for script, keys, args in calls))

    found = await stored(book, upstream)
    assert found is not None
    assert found.samples == pytest.approx(sum(2 ** (-k / 100) for k in range(60)))


async def test_an_upstream_has_a_key_of_its_own_slot_that_expires(
    store: Store, book: DurationBook
) -> None:
    first, second = new_upstream(), new_upstream()
    await record(book, first, [(1.0, 2.0)])
    await record(book, second, [(1.0, 2.0)])

    keys = [store.keys.durations(u) for u in (first, second)]
    assert len({key_slot(k.encode()) for k in keys}) == 2
    assert key_slot(keys[0].encode()) != key_slot(store.keys.parts[0].schedule.encode())
    assert 0 < await store.redis.pttl(keys[0]) <= store.retention_ms
    assert (await store.redis.hgetall(keys[0]))["upstream"] == first


@pytest.mark.parametrize(
    "garbage",
    [
        {"scale": "not a number", "12": "3"},
        {"scale": "-1", "12": "3"},
        {"scale": "1", "12": "many"},
        {"scale": "1", "no-bin": "1"},
        {"scale": "1", "999": "1"},
        {"scale": "inf", "12": "1"},
        {"12": "1"},
    ],
    ids=["scale", "negative-scale", "weight", "field", "bin", "infinite", "no-scale"],
)
async def test_garbage_is_refused_on_read_and_healed_by_the_next_record(
    store: Store, book: DurationBook, garbage: dict[str, str]
) -> None:
    upstream = new_upstream()
    await store.redis.hset(store.keys.durations(upstream), mapping=garbage)
    with pytest.raises(ConfigurationError):
        await stored(book, upstream)

    await record(book, upstream, [(9.5, 10.5)])
    await record(fast_renormalizing(store), upstream, [(9.5, 10.5)])

    found = await stored(book, upstream)
    assert found is not None and found.samples > 0


def fast_renormalizing(store: Store) -> DurationBook:
    """A book whose every record renormalizes (the scale grows by 2**1000 per sample)."""
    return DurationBook(store.redis, store.keys, 3600, half_life=1e-3)


async def test_a_key_of_another_type_starts_over(store: Store, book: DurationBook) -> None:
    upstream = new_upstream()
    await store.redis.set(store.keys.durations(upstream), "garbage")

    assert await record(book, upstream, [(9.5, 10.5)]) == 1

    found = await stored(book, upstream)
    assert found is not None and found.samples == pytest.approx(1.0)


# -- the worker's cache of planners ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def train(book: DurationBook, upstream: str, jobs: int = 40) -> None:
    await record(book, upstream, [(JOB_SECONDS - 0.5, JOB_SECONDS + 0.5)] * jobs)


async def test_planners_are_read_once_per_batch_and_refresh_period(book: DurationBook) -> None:
    trained, fresh = new_upstream(), new_upstream()
    await train(book, trained)
    await record(book, fresh, [(1.0, 2.0)])
    reads: list[list[str]] = []
    read = book.read

    async def counted(upstreams: list[str]) -> list[dict[str, str]]:
        reads.append(list(upstreams))
        return await read(upstreams)

    book.read = counted  # type: ignore[method-assign]
    clock = Clock()
    schedules = LearnedSchedules(book, refresh_seconds=5.0, clock=clock)

    asks = [trained, fresh, trained, new_upstream()] * 5
    planners = await asyncio.gather(*(schedules.planner(u) for u in asks))
    assert [p is not None for p in planners[:4]] == [True, False, True, False]
    assert len(reads) == 1 and len(reads[0]) == 3  # one round trip, each upstream once

    clock.now = 4.9
    await schedules.planner(trained)
    assert len(reads) == 1
    clock.now = 5.0
    await schedules.planner(trained)
    assert reads[1:] == [[trained]]


async def test_an_unreadable_histogram_means_the_backoff_logged_once(
    store: Store, book: DurationBook, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = new_upstream()
    await store.redis.hset(store.keys.durations(upstream), mapping={"scale": "x", "1": "2"})
    clock = Clock()
    schedules = LearnedSchedules(book, refresh_seconds=1.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="worker.schedules"):
        assert await schedules.planner(upstream) is None
        clock.now = 10.0
        assert await schedules.planner(upstream) is None

    unreadable = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(unreadable) == 1 and upstream in unreadable[0].getMessage()


async def test_a_store_error_while_reading_means_the_backoff_until_the_next_read(
    book: DurationBook, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = new_upstream()
    await train(book, upstream)
    read = book.read
    failing = True

    async def flaky(upstreams: list[str]) -> list[dict[str, str]]:
        if failing:
            raise RedisConnectionError("Connection reset by peer")
        return await read(upstreams)

    book.read = flaky  # type: ignore[method-assign]
    clock = Clock()
    schedules = LearnedSchedules(book, refresh_seconds=1.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="worker.schedules"):
        assert await schedules.planner(upstream) is None
    assert "reading learned durations failed" in caplog.text
    failing, clock.now = False, 1.0
    assert await schedules.planner(upstream) is not None


# -- the poller --------------------------------------------------------------------------------


class Upstream:
    """A job's status URL answering `result` (pending until told otherwise); the times it was
    requested."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.result = "pending"
        self.hits: list[float] = []


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    job = Upstream("")

    async def status(request: web.Request) -> web.Response:
        job.hits.append(time.monotonic())
        return web.json_response({"result": job.result})

    app = web.Application()
    app.router.add_get("/jobs/{id}/status", status)
    async with served(app) as base:
        job.url = f"{base}/jobs/j1{secrets.token_hex(3)}/status"
        yield job


def spec_of(url: str, **policy: Any) -> dict[str, Any]:
    return WatchCreate.model_validate({"status_url": url, "policy": policy}).spec()


def poller_settings() -> Settings:
    """Fast polls; the fleet-wide host budget out of the way (these tests are about schedules)."""
    return Settings.model_validate(
        {
            "min_poll_interval": 0.05,
            "allowed_networks": "127.0.0.0/8",
            "host_rate_limit": 1000,
            "host_burst": 1000,
        }
    )


async def poll_due(poller: Poller, store: Store) -> list[str]:
    """Claim what is due and handle it as the claim loop would; returns the ids handled."""
    leased = await claim(store)
    poller.sync_clock(leased.now_ms)
    for claimed in leased.watches:
        poller.keeper.hold(claimed)
    await asyncio.gather(*(poller._handle(c) for c in leased.watches))
    return [c.id for c in leased.watches]


async def make_due(store: Store, watch_id: str) -> None:
    await store.redis.zadd(store.keys.of(watch_id).schedule, {watch_id: 0})


async def test_a_trained_upstream_puts_the_first_poll_off_without_a_request(
    store: Store, book: DurationBook, upstream: Upstream
) -> None:
    await train(book, upstream_key(upstream.url))
    adaptive, _ = await store.register(TENANT, spec_of(upstream.url), 600)
    blind, _ = await store.register(
        TENANT, spec_of(upstream.url, adaptive=False, initial_wait_time=5), 600
    )
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())
        await poll_due(poller, store)

        put_off = await store.get(TENANT, adaptive["id"])
        assert put_off["attempts"] == 0 and put_off["state"] == "pending"
        waits = put_off["next_poll_at"] - put_off["created_at"]
        # Jobs end at 9.5-10.5 s: the first poll waits until about then (less 10 % jitter).
        assert 8_000 <= waits <= 10_500, waits
        assert (
            await store.redis.zscore(store.keys.of(adaptive["id"]).schedule, adaptive["id"])
            == put_off["next_poll_at"]
        )
        polled = await store.get(TENANT, blind["id"])
        assert polled["attempts"] == 1 and len(upstream.hits) == 1  # only the blind one
        assert polled["next_poll_at"] - polled["last_polled_at"] <= 5_500  # 5 s ± 0.5 s

        await make_due(store, adaptive["id"])  # its planned time has come
        assert await poll_due(poller, store) == [adaptive["id"]]
    assert (await store.get(TENANT, adaptive["id"]))["attempts"] == 1
    assert len(upstream.hits) == 2


async def test_adaptive_polls_follow_the_plan_within_the_bounds_and_hints_win() -> None:
    durations = DurationHistogram()
    for _ in range(40):
        durations.add(JOB_SECONDS - 0.5, JOB_SECONDS + 0.5)
    planner = LearnedSchedule(durations)
    spec = SpecCache(min_poll_interval=0.5).parse(
        WatchCreate.model_validate(
            {"status_url": "http://t.example/jobs/j1/status", "policy": {"max_interval": 4}}
        ).model_dump_json()
    )
    created = 1_000_000
    doc: Any = {
        "created_at": created,
        "deadline": created + 60_000,
        "attempts": 1,
        "webhook": {"state": "none", "attempts": 0, "last_status_code": None},
    }
    for elapsed_ms in range(0, 20_000, 250):
        now = created + elapsed_ms
        planned = advance(doc, spec, PENDING, now, random.Random(elapsed_ms), planner=planner)
        delay = (planned["next_poll_at"] - now) / 1000
        expected = next_poll_delay(
            spec.backoff,
            PENDING,
            2,
            (doc["deadline"] - now) / 1000,
            None,
            random.Random(elapsed_ms),
            planner=planner,
            elapsed=elapsed_ms / 1000,
        )
        assert delay == pytest.approx(expected, abs=1e-3)
        assert 0.5 <= delay <= 4.0  # VTW_MIN_POLL_INTERVAL .. max_interval
    early = advance(doc, spec, PENDING, created + 1_000, random.Random(1), planner=planner)
    assert early["next_poll_at"] - (created + 1_000) >= 3_600  # no early polls: near the cap

    short = {**doc, "deadline": created + 10_500}
    last = advance(short, spec, PENDING, created + 9_000, random.Random(1), planner=planner)
    assert last["next_poll_at"] == short["deadline"]  # a last poll at the deadline

    hinted = Observation(Status.PENDING, 200, eta_seconds=1.0)
    for now in (created + 1_000, created + 9_000):
        with_plan = advance(doc, spec, hinted, now, random.Random(2), planner=planner)
        without = advance(doc, spec, hinted, now, random.Random(2))
        assert with_plan["next_poll_at"] == without["next_poll_at"]


async def test_a_completion_is_recorded_with_the_save_as_the_interval_it_ended_in(
    store: Store, book: DurationBook, upstream: Upstream
) -> None:
    doc, _ = await store.register(TENANT, spec_of(upstream.url), 600)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())
        await poll_due(poller, store)
        pending = await store.get(TENANT, doc["id"])
        upstream.result = "completed"
        await asyncio.sleep(0.3)
        await make_due(store, doc["id"])
        await poll_due(poller, store)

    ended = await store.get(TENANT, doc["id"])
    assert ended["state"] == "completed" and ended["finished_at"] is not None
    durations = await stored(book, upstream_key(upstream.url))
    assert durations is not None and durations.samples == pytest.approx(1.0)
    after = (pending["pending_at"] - doc["created_at"]) / 1000
    by = (ended["finished_at"] - doc["created_at"]) / 1000
    assert pending["pending_at"] <= pending["last_polled_at"]
    assert by - after >= 0.3
    assert after <= durations.quantile(0.5) <= by
    assert durations.ended_by(by * 2 ** (1 / 8)) == pytest.approx(1.0)  # to a bin's width


async def test_a_failing_store_read_falls_back_to_todays_rules(
    store: Store, book: DurationBook, upstream: Upstream
) -> None:
    await train(book, upstream_key(upstream.url))
    doc, _ = await store.register(TENANT, spec_of(upstream.url), 600)
    async with aiohttp.ClientSession() as session:
        poller = Poller(store, session, poller_settings())

        async def failing(upstreams: Any) -> Any:
            raise RedisConnectionError("Connection reset by peer")

        poller.schedules.book.read = failing  # type: ignore[method-assign]
        await poll_due(poller, store)

    polled = await store.get(TENANT, doc["id"])
    assert polled["attempts"] == 1 and len(upstream.hits) == 1  # polled at once, as today
    assert polled["next_poll_at"] - polled["last_polled_at"] <= 1_500
