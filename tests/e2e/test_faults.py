"""Faults with real processes: a SIGKILLed worker, a Redis outage, a Redis stall, graceful
shutdown (within and past the grace period)."""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.store.keys import Keys

from .helpers import (
    FAST_POLICY,
    Api,
    Planned,
    Registered,
    Simulator,
    gather_limited,
    register_ahead,
    register_all,
    verify_final,
    wait_all_done,
)
from .procs import SHARED_REDIS_URL, Proc, Processes, free_port, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

# A claimed watch's schedule score is its lease expiry (claim time + lease), while its document
# still says when it was due: a gap this large means "under lease" (the policies here poll at
# least every 1.1 s, so a scheduled poll is never this far from its document's next_poll_at).


def plan_jobs(
    rng: random.Random,
    count: int,
    low: float,
    high: float,
    policy: dict[str, float],
    **faults: float,
) -> list[Planned]:
    plan = []
    for _ in range(count):
        outcome = "error" if rng.random() < 0.25 else "completed"
        job = {"duration": round(rng.uniform(low, high), 3), "outcome": outcome, **faults}
        plan.append(Planned(job, outcome, policy))
    return plan


async def leases(redis: aioredis.Redis, namespace: str) -> dict[str, str]:
    """The watches under lease right now: id -> fencing token."""
    held = await redis.hgetall(Keys(namespace).parts[0].leases)
    return {key.decode(): value.decode() for key, value in held.items()}


async def polled_share(api: Api, registered: list[Registered], sample: int = 25) -> float:
    """The share of watches polled at least once, estimated from a fixed sample read through
    the API (listing them all is too slow to catch the moment under load)."""
    ids = [r.watch_id for r in registered[:: max(1, len(registered) // sample)]]
    watches = await gather_limited([lambda i=i: api.get(i) for i in ids])
    return sum(1 for w in watches if w["attempts"] >= 1) / len(watches)


async def test_sigkilled_worker_loses_nothing(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    shared_redis: aioredis.Redis,
) -> None:
    """1,000 watches in flight, two workers; one is SIGKILLed: the other reclaims its leases
    once they expire, and every watch ends once, in its expected state."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=2, shutdown_grace_seconds=2)
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    _, api_url = await procs.start_api(env)
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    policy = {**FAST_POLICY, "initial_wait_time": 0.2, "jitter": 0.1, "max_interval": 1.0}
    plan = plan_jobs(random.Random(seed), 1000, 2.0, 6.0, policy, latency=0.05)

    started = time.monotonic()
    registered = await register_ahead(sim, api, plan)  # the 2-6 s jobs start now
    jobs_started = time.monotonic()
    registered_in = jobs_started - started
    victim = procs.start_worker(env, "worker-victim")
    procs.start_worker(env, "worker-survivor")

    async def half_polled() -> float | None:
        share = await polled_share(api, registered)
        return share if share >= 0.5 else None

    share = await poll_until(
        half_polled, timeout=30, what="half the watches polled", alive=procs.check_alive
    )
    victim.send(signal.SIGKILL)
    assert await victim.wait_exit(5) == -signal.SIGKILL
    killed_at = time.monotonic() - jobs_started
    before = await leases(shared_redis, namespace)
    pending_at_kill = (await api.status())["by_state"]["pending"]
    assert pending_at_kill > 0, "the kill came after every watch had ended"

    # Leases the dead worker held stay untouched until they expire (2 s); the survivor's are
    # extended (every 1 s) or released: compare two snapshots 1.3 s apart (a measurement
    # window, not a wait for a state).
    await asyncio.sleep(1.3)
    after = await leases(shared_redis, namespace)
    orphaned = {i for i, score in before.items() if after.get(i) == score}
    print(
        f"registered 1000 in {registered_in:.1f}s; killed {killed_at:.1f}s after the jobs "
        f"started, with "
        f"{share:.0%} polled, {pending_at_kill} pending, {len(orphaned)} leases orphaned"
    )
    assert orphaned, "the killed worker held no lease: nothing to reclaim"

    await wait_all_done(api, 1000, timeout=60, alive=procs.check_alive)
    print(f"all done {time.monotonic() - jobs_started:.1f}s after the jobs started")
    await verify_final(api, registered, shared_redis, namespace)
    assert await shared_redis.zcard(Keys(namespace).parts[0].schedule) == 0
    # The simulator served every job's terminal answer (and the orphans were polled again).
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    unanswered = [i for i, d in jobs.items() if d["completed_noticed_at"] is None]
    assert not unanswered, unanswered[:10]


async def test_redis_outage_is_ridden_out(
    procs: Processes, http: httpx.AsyncClient, data_dir: Path
) -> None:
    """Redis (AOF, everysec) stops for ~3 s under load: the API answers 503 with a JSON
    detail meanwhile, then recovers; the worker reconnects; no watch is lost."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    namespace = "e2e" + secrets.token_hex(6)
    redis_proc = await procs.start_redis(port, data_dir, "redis")
    env = service_env(redis_url, namespace, lease_seconds=2, shutdown_grace_seconds=2)
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    api_proc, api_url = await procs.start_api(env)
    worker = procs.start_worker(env, "worker")
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    plan = plan_jobs(random.Random(seed), 200, 2.0, 5.0, FAST_POLICY)

    started = time.monotonic()
    registered = await register_all(sim, api, plan)

    async def some_polled() -> float | None:
        share = await polled_share(api, registered)
        return share if share >= 0.3 else None

    await poll_until(some_polled, timeout=30, what="30% of watches polled", alive=procs.check_alive)
    before = await api.status()
    assert before["by_state"]["pending"] > 0, before
    print(f"stopping Redis with {before['by_state']['pending']} watches pending")

    redis_proc.send(signal.SIGTERM)  # with AOF on, Redis fsyncs before it exits
    assert await redis_proc.wait_exit(10) == 0
    down_at = time.monotonic()
    some_id = registered[0].watch_id
    checks = 0
    while time.monotonic() - down_at < 3.0:
        procs.check_alive()
        requests = [
            ("GET", f"/v1/watches/{some_id}", None),
            ("GET", "/v1/watches", None),
            ("GET", "/v1/status", None),
            ("POST", "/v1/watches", {"status_url": f"{sim_url}/jobs/j1/status"}),
        ]
        *responses, readyz = await asyncio.gather(
            *(http.request(m, f"{api_url}{path}", json=body) for m, path, body in requests),
            http.get(f"{api_url}/readyz"),
        )
        for (method, path, _), response in zip(requests, responses, strict=True):
            assert response.status_code == 503, (method, path, response.text)
            assert response.headers["content-type"] == "application/json", response.headers
            detail = response.json()["detail"]
            assert isinstance(detail, str) and "Traceback" not in response.text, response.text
        assert readyz.status_code == 503, readyz.text
        assert readyz.json() == {"status": "unavailable"}, readyz.text
        checks += 1
        await asyncio.sleep(0.25)  # pacing the checks during a fixed-length outage
    assert worker.running() and api_proc.running()

    await procs.start_redis(port, data_dir, "redis-restarted")
    down_for = time.monotonic() - down_at

    async def ready() -> bool:
        return (await http.get(f"{api_url}/readyz")).status_code == 200

    await poll_until(ready, timeout=10, what="the API to be ready again", alive=procs.check_alive)
    recovered_in = time.monotonic() - down_at - down_for
    assert (await api.get(some_id))["id"] == some_id
    after = await api.status()
    assert after["total"] == 200, after  # the AOF kept every watch

    async def progressed() -> dict[str, int] | None:
        now = await api.status()
        ended = 200 - now["by_state"]["pending"]
        return now["by_state"] if ended > 200 - after["by_state"]["pending"] else None

    await poll_until(progressed, timeout=15, what="the worker to reconnect and end watches")
    reconnected_in = time.monotonic() - down_at - down_for
    await wait_all_done(api, 200, timeout=60, alive=procs.check_alive)
    own = aioredis.Redis.from_url(redis_url)
    try:
        await verify_final(api, registered, own, namespace)
    finally:
        await own.aclose()
    print(
        f"down {down_for:.1f}s ({checks} rounds of 503 checks); API ready {recovered_in:.1f}s "
        f"and watches ending {reconnected_in:.1f}s after restart; "
        f"all done {time.monotonic() - started:.1f}s after start"
    )
    for proc in (api_proc, worker):
        assert "Traceback" not in proc.log(), proc.tail()


async def sigterm_with_polls_in_flight(
    procs: Processes,
    http: httpx.AsyncClient,
    env: dict[str, str],
    plan: list[Planned],
    *,
    seed: int,
    grace: float,
) -> tuple[Proc, Simulator, Api, list[Registered], int | None, float]:
    """Start a stack with one worker, register `plan`, and SIGTERM the worker once 10 polls are
    in flight; returns the worker, the stack, its exit code and how long it took to exit."""
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    _, api_url = await procs.start_api(env)
    first = procs.start_worker(env, "worker-first")
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    registered = await register_all(sim, api, plan)

    async def polls_in_flight() -> int | None:
        in_flight: int = (await sim.stats())["in_flight"]
        return in_flight if in_flight >= 10 else None

    in_flight = await poll_until(
        polls_in_flight, timeout=15, what="10 polls in flight", alive=procs.check_alive
    )
    signalled = time.monotonic()
    first.send(signal.SIGTERM)
    code = await first.wait_exit(grace + 3)
    exited_in = time.monotonic() - signalled
    print(f"SIGTERM with {in_flight} polls in flight: exited {code} after {exited_in:.2f}s")
    return first, sim, api, registered, code, exited_in


async def test_sigterm_finishes_polls_in_flight_then_exits(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    shared_redis: aioredis.Redis,
) -> None:
    """A worker with slow polls in flight gets SIGTERM: it saves them, exits 0 within the
    grace period, holds no lease afterwards, and another worker finishes its watches."""
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=2, shutdown_grace_seconds=5)
    plan = plan_jobs(random.Random(7), 40, 3.0, 4.0, FAST_POLICY, latency=1.0)
    first, sim, api, registered, code, exited_in = await sigterm_with_polls_in_flight(
        procs, http, env, plan, seed=7, grace=5
    )
    assert code == 0, first.tail()
    assert exited_in < 5 + 1.0
    log = first.log()
    assert "stopping" in log and "worker stopped" in log and "Traceback" not in log, log
    assert (await sim.stats())["in_flight"] == 0

    # Every request it made was saved (the polls in flight too), and it left no lease behind.
    assert await leases(shared_redis, namespace) == {}
    watches = {w["id"]: w for w in await api.list_all()}
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    unsaved = [
        (r.watch_id, jobs[r.job_id]["requests"], watches[r.watch_id]["attempts"])
        for r in registered
        if r.job_id is not None and jobs[r.job_id]["requests"] != watches[r.watch_id]["attempts"]
    ]
    assert not unsaved, unsaved
    pending = (await api.status())["by_state"]["pending"]
    assert pending > 0, "every watch ended before the SIGTERM: nothing left for the next worker"

    procs.start_worker(env, "worker-second")
    await wait_all_done(api, len(plan), timeout=40, alive=procs.check_alive)
    await verify_final(api, registered, shared_redis, namespace)
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    assert all(d["max_concurrent"] == 1 for d in jobs.values()), jobs
    print(f"{pending} watches left pending were finished by the second worker")


async def test_sigterm_past_the_grace_period_leaves_polls_to_others(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    shared_redis: aioredis.Redis,
) -> None:
    """Polls slower than the grace period are cancelled: the worker still exits 0 in time,
    and another worker reclaims those watches when their leases lapse (not at once: a
    cancelled request may have reached its server)."""
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=2, shutdown_grace_seconds=0.5)
    plan = plan_jobs(random.Random(8), 20, 0.5, 1.0, FAST_POLICY, latency=3.0)
    first, _, api, registered, code, exited_in = await sigterm_with_polls_in_flight(
        procs, http, env, plan, seed=8, grace=0.5
    )
    assert code == 0, first.tail()
    assert exited_in < 0.5 + 1.5
    log = first.log()
    assert "cancelled" in log and "Traceback" not in log, log
    assert await leases(shared_redis, namespace), "the cancelled polls' leases should remain"

    procs.start_worker(env, "worker-second")
    await wait_all_done(api, len(plan), timeout=40, alive=procs.check_alive)
    await verify_final(api, registered, shared_redis, namespace)


# Longer than the service's Redis `socket_timeout` (5 s in service/store/connection.py), so its
# client times out and retries a command that Redis will still run once it wakes up.
STALL_SECONDS = 6


async def test_redis_stall_does_not_register_a_watch_twice(
    procs: Processes, http: httpx.AsyncClient, data_dir: Path
) -> None:
    """Redis blocks for longer than the client's socket timeout while a watch is registered:
    the client retries the script, Redis runs both calls, and the watch must still count once
    (else `/v1/status` shows a watch that does not exist, pending forever)."""
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    namespace = "e2e" + secrets.token_hex(6)
    await procs.start_redis(port, data_dir, "redis", "--enable-debug-command", "yes")
    env = service_env(redis_url, namespace, lease_seconds=2, shutdown_grace_seconds=1)
    _, sim_url = await procs.start_simulator("simulator", "--seed", "9")
    _, api_url = await procs.start_api(env)
    procs.start_worker(env, "worker")
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    plan = plan_jobs(random.Random(9), 2, 0.5, 0.5, FAST_POLICY)
    registered = await register_all(sim, api, plan[:1])
    await wait_all_done(api, 1, timeout=20, alive=procs.check_alive)

    own = aioredis.Redis.from_url(redis_url)
    sleeper = aioredis.Redis.from_url(redis_url, socket_timeout=STALL_SECONDS + 10)
    probe = aioredis.Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        stall = asyncio.create_task(sleeper.execute_command("DEBUG", "SLEEP", STALL_SECONDS))

        async def stalled() -> bool:
            try:
                await probe.ping()
            except RedisTimeoutError:
                return True
            return False

        await poll_until(stalled, timeout=5, what="Redis to stall", interval=0.01)
        started = time.monotonic()
        registered += await register_all(sim, api, plan[1:])  # 201 once Redis is back
        print(f"registered during a {STALL_SECONDS}s stall in {time.monotonic() - started:.1f}s")
        await stall
        await wait_all_done(api, 2, timeout=20, alive=procs.check_alive)
        await verify_final(api, registered, own, namespace)
    finally:
        for client in (own, sleeper, probe):
            await client.aclose()
