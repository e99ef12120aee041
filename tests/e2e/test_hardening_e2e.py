"""Black-box regression tests of issue 8: no duplicated, lost or stuck work under contention,
Redis faults and hostile upstreams.

Real processes on loopback (`vtwatch api`, `vtwatch worker`, `vtwatch simulate`, a
redis-server of each test's own); the webhook receiver, the hostile upstream and the latency
proxy run in the test process. Only the public surface is used: the HTTP API, `VTW_*`
variables, the simulator's HTTP API, and Redis commands for fault injection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from client.webhooks import WebhookVerificationError, verify

from .faults import (
    Arrival,
    LatencyProxy,
    Receiver,
    busy_script,
    full_memory,
    register_before_jobs,
    register_watch,
    replica_of_dead_master,
    serve,
    stop_gracefully,
    webhook_secret,
)
from .helpers import (
    FAST_POLICY,
    Api,
    Planned,
    Simulator,
    gather_limited,
    register_all,
    verify_final,
    wait_all_done,
)
from .procs import Processes, free_port, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

# Every poll delay in these tests is far below the service's default 1 s floor.
MIN_POLL_INTERVAL = 0.05
# One quick poll for a job that has already ended.
ONE_POLL = {**FAST_POLICY, "initial_wait_time": 0.05, "jitter": 0.0}
# Fleet-wide per-host rate limits out of the way: these scenarios are about leases and queues.
NO_RATE_LIMIT = {"host_rate_limit": 1000, "host_burst": 1000}


@dataclass(frozen=True)
class OwnRedis:
    port: int
    url: str
    client: aioredis.Redis


@pytest.fixture
async def own_redis(procs: Processes, data_dir: Path) -> AsyncIterator[OwnRedis]:
    """A redis-server of the test's own (AOF on), and a client of it."""
    port = free_port()
    await procs.start_redis(port, data_dir, "redis")
    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        yield OwnRedis(port, url, client)
    finally:
        await client.aclose()


def new_namespace() -> str:
    return "e2e" + secrets.token_hex(6)


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


async def webhook_summary(api: Api) -> dict[str, int]:
    summary: dict[str, int] = (await api.status())["webhooks"]
    return summary


def bad_signatures(secret: str, arrivals: list[Arrival]) -> list[tuple[int, str]]:
    failures = []
    for arrival in arrivals:
        try:
            verify(secret, arrival.headers, arrival.body)
        except WebhookVerificationError as exc:
            failures.append((arrival.number, str(exc)))
    return failures


# -- 1. a long per-host queue of webhooks -----------------------------------------------------

QUEUED_WEBHOOKS = 120
RECEIVER_SECONDS = 0.08
FRESH_SECONDS = 5.0


async def deliveries_of(http: httpx.AsyncClient, api_url: str, watch_id: str) -> list[Any]:
    response = await http.get(f"{api_url}/v1/watches/{watch_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[Any] = response.json()["items"]
    return items


async def test_a_long_per_host_queue_delivers_each_webhook_once_freshly_signed(
    procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """120 watches end at once; one worker sends their webhooks one at a time (per-host
    concurrency 1) to a receiver that takes 80 ms, with a 1 s lease: ~10 s of queue. Each
    webhook is POSTed exactly once (a second POST only as the recorded retry of an attempt
    that got no answer in time, e.g. on an overloaded machine), verifies with the tenant's
    secret, and is signed when sent (its `webhook-timestamp` within 5 s of the receiver's
    clock), not when queued."""

    async def slow_204(arrival: Arrival) -> int:
        await asyncio.sleep(RECEIVER_SECONDS)
        return 204

    receiver = await Receiver(slow_204).start()
    try:
        env = service_env(
            own_redis.url,
            new_namespace(),
            min_poll_interval=MIN_POLL_INTERVAL,
            per_host_concurrency=1,
            lease_seconds=1,
            webhook_timeout=0.5,
            shutdown_grace_seconds=20,
            **NO_RATE_LIMIT,
        )
        _, sim_url = await procs.start_simulator("simulator")
        _, api_url = await procs.start_api(env)
        sim, api = Simulator(http, sim_url), Api(http, api_url)
        secret = await webhook_secret(http, api_url)
        pairs = await register_before_jobs(
            http,
            api_url,
            sim,
            [{"duration": 0.0}] * QUEUED_WEBHOOKS,
            ONE_POLL,
            webhook_url=receiver.hook_url,
        )
        watch_ids = [watch["id"] for watch, _ in pairs]
        worker = procs.start_worker(env, "worker")
        started = time.monotonic()

        async def all_delivered() -> dict[str, int] | None:
            summary = await webhook_summary(api)
            return summary if summary["delivered"] == QUEUED_WEBHOOKS else None

        await poll_until(
            all_delivered,
            timeout=45,
            what=f"{QUEUED_WEBHOOKS} webhooks delivered",
            interval=0.2,
            alive=procs.check_alive,
        )
        delivered_in = time.monotonic() - started
        # Nothing is due any more: once the worker has exited, no further POST can come.
        worker.send(signal.SIGTERM)
        code = await worker.wait_exit(30)
        recorded = await gather_limited(
            [lambda i=i: deliveries_of(http, api_url, i) for i in watch_ids]
        )
    finally:
        await stop_gracefully(procs)
        await receiver.aclose()

    arrivals = receiver.arrivals
    posts: dict[str, list[Arrival]] = {watch_id: [] for watch_id in watch_ids}
    for arrival in arrivals:
        posts.setdefault(arrival.event["data"]["id"], []).append(arrival)
    attempts = dict(zip(watch_ids, recorded, strict=True))
    # POSTs the service did not record as attempts: sent again while the first was answered.
    duplicated = {
        watch_id: (len(posts[watch_id]), len(attempts[watch_id]))
        for watch_id in watch_ids
        if len(posts[watch_id]) > len(attempts[watch_id])
    }
    # Recorded retries: allowed only after an attempt that got no answer (a timeout).
    retried = {w: a for w, a in attempts.items() if len(a) > 1}
    answered_then_retried = {
        w: [(a["status_code"], a["error"]) for a in items]
        for w, items in retried.items()
        if any(a["status_code"] is not None for a in items[:-1])
    }
    not_once_2xx = {
        w: [a["status_code"] for a in items]
        for w, items in attempts.items()
        if not items or items[-1]["status_code"] != 204
    }
    stale = [
        (a.number, None if a.signed_at is None else round(a.received_at - a.signed_at, 1))
        for a in arrivals
        if a.signed_at is None or abs(a.received_at - a.signed_at) > FRESH_SECONDS
    ]
    unsigned = bad_signatures(secret, arrivals)
    extra = sum(posted - kept for posted, kept in duplicated.values())
    print(
        f"{len(arrivals)} POSTs for {QUEUED_WEBHOOKS} webhooks in {delivered_in:.1f}s: "
        f"{len(duplicated)} duplicated ({extra} POSTs unrecorded), {len(retried)} retried after "
        f"no answer in time, {len(stale)} signed over {FRESH_SECONDS:g}s before arrival (worst "
        f"{max((abs(s or 0) for _, s in stale), default=0)}s), {len(unsigned)} unverifiable"
    )
    assert set(posts) == set(watch_ids), "a webhook for an unknown watch"
    assert all(posts.values()), "a webhook was never POSTed"
    assert all(len({a.webhook_id for a in p}) == 1 for p in posts.values()), "webhook-id changed"
    assert len({p[0].webhook_id for p in posts.values()}) == QUEUED_WEBHOOKS
    some = dict(list(duplicated.items())[:5])
    assert not duplicated, (
        f"{len(duplicated)} webhooks POSTed more often than attempted, (POSTs, attempts): {some}"
    )
    assert not answered_then_retried, answered_then_retried
    assert not not_once_2xx, not_once_2xx
    assert len(arrivals) == sum(len(a) for a in attempts.values())
    assert not stale, f"{len(stale)} stale webhook-timestamps (POST number, age s): {stale[:5]}"
    assert not unsigned, unsigned
    assert all(a.event["type"] == "watch.completed" for a in arrivals)
    assert code == 0, "the worker did not stop cleanly"


# -- 2. lease extensions racing finished polls ------------------------------------------------

SLOW_POLLS = 150
POLL_SECONDS = 1.6
REDIS_ONE_WAY = 0.002


@pytest.mark.parametrize(
    "per_host", [1000, 64], ids=["all-polls-at-once", "polls-queue-for-the-host"]
)
async def test_lease_extensions_never_discard_a_finished_poll(
    per_host: int, procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """150 watches on jobs that have already ended, each poll taking 1.6 s, a 2 s lease (so
    every lease is extended while its poll runs, or while it waits for one of the 64 slots of
    its host by default), and the worker's Redis 2 ms away: every job is requested exactly
    once, and every watch ends `completed` after one attempt."""
    proxy = await LatencyProxy(own_redis.port, REDIS_ONE_WAY).start()
    try:
        settings: dict[str, object] = {
            "min_poll_interval": MIN_POLL_INTERVAL,
            "lease_seconds": 2,
            "per_host_concurrency": per_host,
            "shutdown_grace_seconds": 3,
            **NO_RATE_LIMIT,
        }
        namespace = new_namespace()
        api_env = service_env(own_redis.url, namespace, **settings)
        worker_env = service_env(proxy.url, namespace, **settings)
        _, sim_url = await procs.start_simulator("simulator")
        _, api_url = await procs.start_api(api_env)
        sim, api = Simulator(http, sim_url), Api(http, api_url)
        pairs = await register_before_jobs(
            http, api_url, sim, [{"duration": 0.0, "latency": POLL_SECONDS}] * SLOW_POLLS, ONE_POLL
        )
        procs.start_worker(worker_env, "worker")
        started = time.monotonic()
        await wait_all_done(api, SLOW_POLLS, timeout=40, alive=procs.check_alive)
        done_in = time.monotonic() - started
        jobs = await sim.jobs(job_id for _, job_id in pairs)
        watches = await api.list_all()
    finally:
        await stop_gracefully(procs)
        await proxy.aclose()

    polled_again = {job_id: d["requests"] for job_id, d in jobs.items() if d["requests"] != 1}
    wrong = [
        (w["id"], w["metadata"]["job"], w["state"], w["attempts"], w["last_error"])
        for w in watches
        if w["state"] != "completed" or w["attempts"] != 1
    ]
    print(
        f"{SLOW_POLLS} slow polls done in {done_in:.1f}s; {len(polled_again)} jobs requested "
        f"more than once, {len(wrong)} watches not completed after one attempt"
    )
    assert len(watches) == SLOW_POLLS
    some = dict(list(polled_again.items())[:5])
    assert not polled_again, f"{len(polled_again)} jobs polled more than once, e.g. {some}"
    assert not wrong, wrong[:5]


# -- 3. passing Redis errors ------------------------------------------------------------------

FAULTED_WATCHES = 100


def readonly_fault(redis: OwnRedis) -> AbstractAsyncContextManager[None]:
    return replica_of_dead_master(redis.client)


def oom_fault(redis: OwnRedis) -> AbstractAsyncContextManager[None]:
    return full_memory(redis.client)


def busy_fault(redis: OwnRedis) -> AbstractAsyncContextManager[None]:
    return busy_script(redis.url)


FaultFactory = Callable[[OwnRedis], AbstractAsyncContextManager[None]]
# fault -> (how to make it, for how long, the error code Redis answers with meanwhile)
REDIS_FAULTS: dict[str, tuple[FaultFactory, float, str]] = {
    "readonly": (readonly_fault, 3.0, "READONLY"),  # REPLICAOF a dead master
    "oom": (oom_fault, 3.0, "OOM"),  # maxmemory below what is in use, noeviction
    "busy": (busy_fault, 2.0, "BUSY"),  # a Lua busy loop
}
# The fault must have reached the workers: more error replies than the test's own probes.
MIN_FAULT_ERRORS = 4


async def error_replies(redis: aioredis.Redis, code: str) -> int:
    """How many `-<code>` error replies Redis has sent (INFO errorstats)."""
    stats = await redis.info("errorstats")
    return int(stats.get(f"errorstat_{code}", {}).get("count", 0))


@pytest.mark.parametrize("fault", sorted(REDIS_FAULTS))
async def test_workers_ride_out_a_passing_redis_error(
    fault: str, procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """Two workers and 100 watches on 10-14 s jobs; Redis answers every write (or, for busy,
    every command) with an error for a few seconds: both workers keep running, and every watch
    ends in its expected state with nothing left pending."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    env = service_env(
        own_redis.url,
        new_namespace(),
        min_poll_interval=MIN_POLL_INTERVAL,
        lease_seconds=2,
        shutdown_grace_seconds=2,
    )
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    _, api_url = await procs.start_api(env)
    workers = [procs.start_worker(env, f"worker-{n}") for n in (1, 2)]
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    plan = []
    for _ in range(FAULTED_WATCHES):
        outcome = "error" if rng.random() < 0.25 else "completed"
        job = {"duration": round(rng.uniform(10.0, 14.0), 3), "outcome": outcome}
        plan.append(Planned(job, outcome, FAST_POLICY))
    registered = await register_all(sim, api, plan)

    async def polling() -> int | None:
        requests: int = (await sim.stats())["requests"]
        return requests if requests >= 2 * FAULTED_WATCHES else None

    await poll_until(polling, timeout=20, what="the workers polling", alive=procs.check_alive)
    before = await api.status()
    assert before["by_state"]["pending"] == FAULTED_WATCHES, before

    make_fault, hold, code = REDIS_FAULTS[fault]
    errors_before = await error_replies(own_redis.client, code)
    async with make_fault(own_redis):
        began = time.monotonic()
        while time.monotonic() - began < hold:  # a fault of fixed length; watch the workers
            procs.check_alive()
            await asyncio.sleep(0.1)
    alive = [worker.running() for worker in workers]
    errors = await error_replies(own_redis.client, code) - errors_before
    print(f"{fault} for {time.monotonic() - began:.1f}s: {errors} {code} replies; running {alive}")
    assert errors >= MIN_FAULT_ERRORS, f"only {errors} {code} replies: the fault missed the workers"
    procs.check_alive()
    assert (await api.status())["by_state"]["pending"] > 0, "every watch ended during the fault"

    await wait_all_done(api, FAULTED_WATCHES, timeout=40, alive=procs.check_alive)
    await verify_final(api, registered)
    summary = await api.status()
    assert summary["by_state"]["pending"] == 0, summary
    assert all(worker.running() for worker in workers)
    # After the fault the workers still served every job to its end.
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    unanswered = [job_id for job_id, d in jobs.items() if d["completed_noticed_at"] is None]
    assert not unanswered, unanswered[:10]


# -- 5. manual redelivery ---------------------------------------------------------------------

RETRY_SCHEDULE = "0.2,60,60"


async def one_watch_with_webhook(
    procs: Processes, http: httpx.AsyncClient, redis_url: str, receiver: Receiver
) -> tuple[str, str]:
    """API, worker and simulator with the `0.2,60,60` retry schedule, and one watch on a job
    that has already ended, its webhook going to `receiver`; returns (API URL, watch id)."""
    env = service_env(
        redis_url,
        new_namespace(),
        min_poll_interval=MIN_POLL_INTERVAL,
        webhook_retry_schedule=RETRY_SCHEDULE,
        shutdown_grace_seconds=2,
    )
    _, sim_url = await procs.start_simulator("simulator")
    _, api_url = await procs.start_api(env)
    procs.start_worker(env, "worker")
    (job,) = await Simulator(http, sim_url).create_jobs([{"duration": 0.0}])
    watch = await register_watch(
        http, api_url, job["status_url"], ONE_POLL, webhook_url=receiver.hook_url
    )
    return api_url, watch["id"]


async def wait_webhook_state(
    http: httpx.AsyncClient, api_url: str, watch_id: str, state: str, timeout: float
) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        watch: dict[str, Any] = (await http.get(f"{api_url}/v1/watches/{watch_id}")).json()
        return watch if watch["webhook"]["state"] == state else None

    return await poll_until(
        reached, timeout=timeout, what=f"the webhook of {watch_id} {state}", interval=0.05
    )


async def test_a_manual_retry_sends_now_though_a_retry_is_scheduled(
    procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """Two failed attempts leave the next retry 60 s away; `POST .../deliveries/retry` answers
    202 and the webhook goes out within ~2 s (same `webhook-id`), and is delivered."""

    async def fail_twice(arrival: Arrival) -> int:
        return 500 if arrival.number <= 2 else 204

    receiver = await Receiver(fail_twice).start()
    try:
        api_url, watch_id = await one_watch_with_webhook(procs, http, own_redis.url, receiver)
        secret = await webhook_secret(http, api_url)

        async def two_failures_recorded() -> list[dict[str, Any]] | None:
            response = await http.get(f"{api_url}/v1/watches/{watch_id}/deliveries")
            items: list[dict[str, Any]] = response.json()["items"]
            return items if len(items) >= 2 else None

        attempts = await poll_until(
            two_failures_recorded,
            timeout=20,
            what="two failed attempts recorded",
            alive=procs.check_alive,
        )
        assert [a["status_code"] for a in attempts] == [500, 500], attempts
        assert len(receiver.arrivals) == 2
        requested = time.time()
        response = await http.post(f"{api_url}/v1/watches/{watch_id}/deliveries/retry")
        assert response.status_code == 202, response.text
        arrivals = await receiver.wait_for(3, timeout=4, what="the manually retried webhook")
        sent_after = arrivals[2].received_at - requested
        print(f"manual retry arrived {sent_after:.2f}s after the request")
        assert sent_after <= 3.0
        watch = await wait_webhook_state(http, api_url, watch_id, "delivered", timeout=10)
        summary = (await http.get(f"{api_url}/v1/status")).json()
    finally:
        await stop_gracefully(procs)
        await receiver.aclose()

    assert len(receiver.arrivals) == 3
    assert len({a.webhook_id for a in receiver.arrivals}) == 1, receiver.arrivals
    assert not bad_signatures(secret, receiver.arrivals[2:])
    assert watch["webhook"]["state"] == "delivered"
    assert watch["webhook"]["last_status_code"] == 204
    assert summary["webhooks"] == {"pending": 0, "delivered": 1, "failed": 0}, summary


async def test_a_manual_retry_during_an_attempt_that_gets_410_is_not_lost(
    procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """A retry requested while the first attempt is in flight (the receiver holds it ~1 s,
    then answers 410, which ends that delivery cycle) is still carried out afterwards: the
    receiver gets a further attempt, answers 204, and the webhook ends `delivered`."""
    retried = asyncio.Event()

    async def hold_then_gone(arrival: Arrival) -> int:
        if arrival.number > 1:
            return 204
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(retried.wait(), 10)
        # ~1 s in flight in all, whenever the retry came (a response delay, not a wait).
        await asyncio.sleep(max(0.0, arrival.received_at + 1.0 - time.time()))
        return 410

    receiver = await Receiver(hold_then_gone).start()
    try:
        api_url, watch_id = await one_watch_with_webhook(procs, http, own_redis.url, receiver)
        await receiver.wait_for(1, timeout=20, what="the first attempt")
        response = await http.post(f"{api_url}/v1/watches/{watch_id}/deliveries/retry")
        assert response.status_code == 202, response.text
        in_flight = len(receiver.arrivals) == 1
        retried.set()
        assert in_flight, "the retry came after the first attempt ended"
        await receiver.wait_for(2, timeout=10, what="an attempt after the 410")
        watch = await wait_webhook_state(http, api_url, watch_id, "delivered", timeout=10)
        deliveries = (await http.get(f"{api_url}/v1/watches/{watch_id}/deliveries")).json()
    finally:
        retried.set()
        await stop_gracefully(procs)
        await receiver.aclose()

    first, second = receiver.arrivals[:2]
    assert second.webhook_id == first.webhook_id
    assert [a["status_code"] for a in deliveries["items"]] == [410, 204], deliveries
    assert watch["webhook"]["last_status_code"] == 204


# -- 7. hostile upstreams ---------------------------------------------------------------------

DEEP = 60_000
HUGE_INT = "9" * 400
TEN_MB = 10 * 1024 * 1024
BIG_BODY = b'{"result": "pending", "pad": "' + b"x" * TEN_MB + b'"}'
HOSTILE_BODIES: dict[str, bytes] = {
    "result-array": b'{"result": []}',
    "result-object": b'{"result": {}}',
    "deep-array": b"[" * DEEP,
    "deep-result": b'{"result": ' + b"[" * DEEP,
    "huge-progress": b'{"result": "pending", "progress": ' + HUGE_INT.encode() + b"}",
    "huge-eta": b'{"result": "pending", "eta_seconds": ' + HUGE_INT.encode() + b"}",
    "nan": b"NaN",
    "nan-result": b'{"result": NaN}',
    "nan-progress": b'{"result": "pending", "progress": NaN}',
    "nan-eta": b'{"result": "pending", "eta_seconds": NaN}',
    "infinite-eta": b'{"result": "pending", "eta_seconds": Infinity}',
    "overflowing-eta": b'{"result": "pending", "eta_seconds": 1e999}',
    "ten-mb": BIG_BODY,
}
HOSTILE_DEADLINE = 3.0
ENDS_WITHIN = 4.0  # seconds past the deadline


async def _hostile(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == "ten-mb-chunked":  # no Content-Length: the reader must stop by itself
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for start in range(0, len(BIG_BODY), 64 * 1024):
                await response.write(BIG_BODY[start : start + 64 * 1024])
            await response.write_eof()
        return response
    return web.Response(body=HOSTILE_BODIES[name], content_type="application/json")


async def test_a_hostile_upstream_never_leaves_a_watch_pending(
    procs: Processes, http: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    """Upstreams answering with wrongly typed, too deep, non-finite, overflowing or 10 MB
    bodies: each watch (3 s deadline) ends `timeout` within a few seconds of its deadline, and
    its webhook is delivered."""
    upstream = web.Application()
    upstream.router.add_get("/{name}/status", _hostile)
    names = [*HOSTILE_BODIES, "ten-mb-chunked"]
    upstream_runner, upstream_url = await serve(upstream)
    receiver = await Receiver().start()
    try:
        env = service_env(
            own_redis.url,
            new_namespace(),
            min_poll_interval=MIN_POLL_INTERVAL,
            lease_seconds=2,
            shutdown_grace_seconds=2,
        )
        _, api_url = await procs.start_api(env)
        procs.start_worker(env, "worker")
        policy = {**FAST_POLICY, "max_wait_time": HOSTILE_DEADLINE}
        watch_ids = {}
        for name in names:
            watch = await register_watch(
                http,
                api_url,
                f"{upstream_url}/{name}/status",
                policy,
                webhook_url=receiver.hook_url,
                metadata={"upstream": name},
            )
            watch_ids[watch["id"]] = name
        api = Api(http, api_url)
        latest: dict[str, dict[str, Any]] = {}

        async def all_ended() -> bool:
            for watch in await api.list_all():
                latest[watch["id"]] = watch
            return all(
                w["state"] != "pending" and w["webhook"]["state"] == "delivered"
                for w in latest.values()
            )

        try:
            await poll_until(
                all_ended,
                timeout=HOSTILE_DEADLINE + 20,
                what="every watch ended and its webhook delivered",
                interval=0.25,
                alive=procs.check_alive,
            )
        except AssertionError as exc:
            stuck = {
                watch_ids[i]: (w["state"], w["attempts"], w["last_error"], w["webhook"]["state"])
                for i, w in latest.items()
                if w["state"] == "pending" or w["webhook"]["state"] != "delivered"
            }
            raise AssertionError(f"{exc}; not ended or not delivered: {stuck}") from None
    finally:
        await stop_gracefully(procs)
        await receiver.aclose()
        await upstream_runner.cleanup()

    assert set(latest) == set(watch_ids)
    late = {}
    for watch_id, watch in latest.items():
        assert watch["state"] == "timeout", (watch_ids[watch_id], watch)
        assert watch["attempts"] >= 2, (watch_ids[watch_id], watch)
        overdue = seconds(watch["finished_at"]) - seconds(watch["deadline"])
        if overdue > ENDS_WITHIN:
            late[watch_ids[watch_id]] = round(overdue, 1)
    assert not late, f"ended more than {ENDS_WITHIN:g}s past the deadline: {late}"
    events = [json.loads(a.body) for a in receiver.arrivals]
    assert {e["data"]["id"] for e in events} == set(watch_ids)
    assert {e["type"] for e in events} == {"watch.timeout"}
