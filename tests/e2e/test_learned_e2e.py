"""Learned schedules end to end (issue 11, item 3): two workers learn an upstream's job
durations from a first set of jobs, then poll a second set with fewer requests per job than
watches with `adaptive: false` on the same mix, and no watch times out.

Time is scaled down tenfold from the bench's lognormal mix (median 3 s instead of 30 s; sigma
0.5, so that the longest of a few dozen jobs keeps the test short) and the client's policy
(0.1 s first delay, x2, a 2 s cap).
"""

from __future__ import annotations

import random
import statistics
import time

import httpx
import pytest
import redis.asyncio as aioredis

from client.learned import MIN_SAMPLES, upstream_key
from service.store.durations import durations_of
from service.store.keys import Keys

from .helpers import Api, Planned, Simulator, register_all, verify_final, wait_all_done
from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

TRAINING_JOBS = 30  # MIN_SAMPLES (20) effective samples, and some
MEASURED_JOBS = 30  # of each kind
POLICY = {
    "initial_wait_time": 0.1,
    "backoff_factor": 2.0,
    "jitter": 0.05,
    "max_interval": 2.0,
    "max_wait_time": 30.0,  # no job of the mix outlasts it (4.6 sigma)
}


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_learned_schedules_save_requests_without_false_timeouts(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    shared_redis: aioredis.Redis,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        lease_seconds=10,
        shutdown_grace_seconds=2,
        learned_refresh_seconds=0.5,
    )
    mix = ["--mix", "lognormal", "--median", "3", "--sigma", "0.5", "--seed", str(seed)]
    _, sim_url = await procs.start_simulator("simulator", *mix)
    _, api_url = await procs.start_api(env)
    procs.start_worker(env, "worker-1")
    procs.start_worker(env, "worker-2")
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    learning = {**POLICY, "adaptive": True}
    blind = {**POLICY, "adaptive": False}

    started = time.monotonic()
    training = [Planned({}, "completed", learning) for _ in range(TRAINING_JOBS)]
    trained = await register_all(sim, api, training)
    await wait_all_done(api, len(trained), timeout=40, alive=procs.check_alive)
    trained_in = time.monotonic() - started

    status_url = (await api.get(trained[0].watch_id))["status_url"]
    key = Keys(namespace).durations(upstream_key(status_url))

    async def learned() -> float | None:
        fields = {text(k): text(v) for k, v in (await shared_redis.hgetall(key)).items()}
        durations = durations_of(fields)
        return durations.samples if durations and durations.samples >= MIN_SAMPLES else None

    samples = await poll_until(learned, timeout=5, what="the fleet's learned durations")

    measured = [
        Planned({}, "completed", learning if i % 2 else blind) for i in range(2 * MEASURED_JOBS)
    ]
    registered = await register_all(sim, api, measured)
    await wait_all_done(api, len(trained) + len(registered), timeout=40, alive=procs.check_alive)
    await verify_final(api, trained + registered, shared_redis, namespace)  # no false timeout

    by_id = {w["id"]: w for w in await api.list_all()}
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    requests: dict[bool, list[int]] = {True: [], False: []}
    latency: dict[bool, list[float]] = {True: [], False: []}
    for r, p in zip(registered, measured, strict=True):
        assert r.job_id is not None
        job, adaptive = jobs[r.job_id], bool(p.policy["adaptive"])
        assert job["requests"] == by_id[r.watch_id]["attempts"], (job, by_id[r.watch_id])
        requests[adaptive].append(job["requests"])
        latency[adaptive].append(job["completed_noticed_at"] - job["ends_at"])
    learned_mean = statistics.mean(requests[True])
    blind_mean = statistics.mean(requests[False])
    print(
        f"trained on {TRAINING_JOBS} jobs in {trained_in:.1f} s ({samples:.1f} effective "
        f"samples); all done in {time.monotonic() - started:.1f} s"
    )
    for adaptive, name in ((True, "learned"), (False, "adaptive=false")):
        cuts = statistics.quantiles(latency[adaptive], n=20)
        print(
            f"{name}: {statistics.mean(requests[adaptive]):.2f} requests/job, detection "
            f"latency p50 {cuts[9]:.2f} s, p95 {cuts[18]:.2f} s"
        )
    assert learned_mean < 0.8 * blind_mean, requests
