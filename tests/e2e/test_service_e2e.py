"""The whole service on loopback: one API, two workers, the simulator and the shared Redis."""

from __future__ import annotations

import random
import time
from datetime import datetime

import httpx
import pytest
import redis.asyncio as aioredis

from .helpers import (
    FAST_POLICY,
    Api,
    Planned,
    Simulator,
    register_all,
    verify_final,
    wait_all_done,
)
from .procs import SHARED_REDIS_URL, Processes, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

JOBS = 500
TIMEOUT_EVERY = 25  # one job in 25 outlives its watch's deadline
ALL_FAULTS = {
    "fail_rate": 0.3,
    "rate_limit_rate": 0.2,
    "retry_after": 0.2,
    "malformed_rate": 0.2,
    "latency": 0.05,
}
FAULTS: list[dict[str, float]] = [
    {},
    {"fail_rate": 0.3},
    {"rate_limit_rate": 0.2, "retry_after": 0.2},
    {"malformed_rate": 0.2},
    {"latency": 0.05},
    ALL_FAULTS,
]


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def mixed_plan(rng: random.Random, sim_url: str) -> list[Planned]:
    """500 jobs of 0.2-3 s ending completed or error, a sixth of them with each fault mix;
    20 that outlive their watch (30 s job, 1.5 s deadline); one unknown job (404)."""
    plan: list[Planned] = []
    for i in range(JOBS):
        faults = FAULTS[i % len(FAULTS)]
        if i % TIMEOUT_EVERY == 7:
            job = {"duration": 30.0, **faults}
            plan.append(Planned(job, "timeout", {**FAST_POLICY, "max_wait_time": 1.5}))
            continue
        outcome = "error" if rng.random() < 0.3 else "completed"
        job = {"duration": round(rng.uniform(0.2, 3.0), 3), "outcome": outcome, **faults}
        plan.append(Planned(job, outcome, FAST_POLICY))
    unknown = f"{sim_url}/jobs/no-such-job/status"
    plan.append(Planned(None, "error", FAST_POLICY, status_url=unknown))
    rng.shuffle(plan)
    return plan


async def test_500_watches_end_in_their_expected_states(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    shared_redis: aioredis.Redis,
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=10, shutdown_grace_seconds=2)
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    _, api_url = await procs.start_api(env)
    procs.start_worker(env, "worker-1")
    procs.start_worker(env, "worker-2")
    sim, api = Simulator(http, sim_url), Api(http, api_url)

    plan = mixed_plan(rng, sim_url)
    started = time.monotonic()
    registered = await register_all(sim, api, plan)
    registered_in = time.monotonic() - started
    await wait_all_done(api, len(plan), timeout=60, alive=procs.check_alive)
    done_in = time.monotonic() - started
    by_state = await verify_final(api, registered, shared_redis, namespace)
    print(f"registered {len(plan)} in {registered_in:.1f}s, all done in {done_in:.1f}s: {by_state}")
    assert by_state["timeout"] == JOBS // TIMEOUT_EVERY

    # A timeout is declared at the deadline (after a last poll there), never before it.
    watches = {w["id"]: w for w in await api.list_all()}
    for r in registered:
        w = watches[r.watch_id]
        if r.expected == "timeout":
            late = _seconds(w["finished_at"]) - _seconds(w["deadline"])
            assert -0.01 <= late <= 3.0, w
            assert w["reason"] == "deadline reached", w

    unknown = [r for r in registered if r.job_id is None]
    assert len(unknown) == 1
    watch = await api.get(unknown[0].watch_id)
    assert watch["state"] == "error" and "404" in watch["reason"], watch
    assert watch["attempts"] == 1, watch

    # No watch was ever polled by two workers at once.
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    concurrent = {job_id: d["max_concurrent"] for job_id, d in jobs.items()}
    assert all(n == 1 for n in concurrent.values()), {k: n for k, n in concurrent.items() if n != 1}
    stats = await sim.stats()
    print(f"simulator: {stats}")
    assert stats["max_concurrent"] == 1, stats
    # The faults were served (and ridden out): 503s, 429s and the unknown job's 404.
    assert {"404", "429", "503"} <= stats["by_status"].keys(), stats
    # Each watch made exactly the requests the simulator saw for its job.
    mismatched = [
        (r.job_id, jobs[r.job_id]["requests"], watches[r.watch_id]["attempts"])
        for r in registered
        if r.job_id is not None and jobs[r.job_id]["requests"] != watches[r.watch_id]["attempts"]
    ]
    assert not mismatched, mismatched[:10]
