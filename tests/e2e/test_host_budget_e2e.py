"""The fleet-wide host budget and circuit breaker with real processes (issue 11, items 1-2).

An API, two workers and the simulator (`--host-rate-limit 30`: 429 beyond 30 requests/s), with
the benchmark's counting proxy (bench/_proxy.py) in front of the simulator: every watch polls
through it, so it sees every request the fleet sends the host, and it can play a host that
answers 503.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from itertools import pairwise

import httpx
import pytest

from bench._proxy import CountingProxy, busiest_window, per_second

from .helpers import Api, Planned, Simulator, register_all, verify_final, wait_all_done
from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

RATE_LIMIT = 20
SIMULATOR_LIMIT = 30


async def test_two_workers_keep_one_host_within_its_budget(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    """120 watches on one host, `VTW_HOST_RATE_LIMIT=20` (and the default burst), two
    workers, a host that answers 429 beyond 30 requests/s: no second sees more than 22
    requests at the host, (almost) none is answered 429, every watch ends in its state, and
    each watch's attempts are the requests made for it (a poll put off is no attempt)."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        lease_seconds=5,
        host_rate_limit=RATE_LIMIT,  # and the default burst: 1 at 20/s
    )
    _, sim_url = await procs.start_simulator(
        "simulator", "--seed", str(seed), "--host-rate-limit", str(SIMULATOR_LIMIT)
    )
    proxy = CountingProxy(sim_url)
    proxy_url = await proxy.start()
    try:
        _, api_url = await procs.start_api(env)
        sim, api = Simulator(http, sim_url), Api(http, api_url)
        policy = {"initial_wait_time": 0.5, "backoff_factor": 1.5, "jitter": 0.1,
                  "max_interval": 2.0, "max_wait_time": 60.0}  # fmt: skip
        plan = []
        for _ in range(120):
            outcome = "error" if rng.random() < 0.25 else "completed"
            job = {"duration": round(rng.uniform(1.0, 4.0), 2), "outcome": outcome}
            plan.append(Planned(job, outcome, policy))
        jobs = await sim.create_jobs([p.job for p in plan if p.job is not None])
        proxied = [
            Planned(None, p.expected, policy, status_url=f"{proxy_url}/jobs/{job['id']}/status")
            for p, job in zip(plan, jobs, strict=True)
        ]
        # Registered before the workers start: the proxy (in this process) then notes each
        # request when it arrives, not once a burst of registrations lets it.
        registered = await register_all(sim, api, proxied)
        began = time.monotonic()
        workers = [procs.start_worker(env, f"worker-{n}") for n in (1, 2)]
        await wait_all_done(api, len(plan), timeout=60, alive=procs.check_alive)
        took = time.monotonic() - began
        await verify_final(api, registered)
        status = await api.status()
        assert all(w.running() for w in workers)
    finally:
        await proxy.aclose()

    times = proxy.times()
    fixed, sliding = busiest_window(times)
    answered = proxy.answered()
    share_429 = answered[429] / len(times)
    print(
        f"{len(times)} requests in {took:.1f}s ({len(times) / took:.1f}/s); busiest second: "
        f"{fixed} (fixed windows), {sliding} (sliding); answers {dict(answered)}, "
        f"429 share {share_429:.2%}; hosts {status.get('hosts')}"
    )
    print("requests per second:", per_second(times))
    assert fixed <= RATE_LIMIT * 1.1, f"{fixed} requests in one second"
    assert sliding <= RATE_LIMIT * 1.1 + 2, f"{sliding} requests within one second"
    assert share_429 < 0.01
    (host,) = status["hosts"]
    assert host["host"] == "127.0.0.1" and host["rate_limit"] == RATE_LIMIT
    assert host["breaker"] == "closed"
    # A poll put off spent no attempt: each watch's attempts are the requests made for it.
    requests_per_job = proxy.per_job()
    watches = {w["id"]: w for w in await api.list_all()}
    job_of = {w["id"]: w["status_url"].split("/jobs/")[1].split("/")[0] for w in watches.values()}
    mismatched = [
        (i, w["attempts"], requests_per_job[job_of[i]])
        for i, w in watches.items()
        if w["attempts"] != requests_per_job[job_of[i]]
    ]
    assert not mismatched, mismatched[:10]


async def test_a_host_answering_503_gets_one_probe_per_cooldown_from_the_fleet(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    """40 watches of 8 s jobs, two workers, `max_attempts` 16; the host answers 503 for 4 s.
    Its breaker opens; from then on until the host recovers, at most one request per cool-down
    (1 s) reaches it from the whole fleet; every watch completes soon after its job (no watch
    runs out of attempts and waits for its deadline, let alone ends without its result)."""
    cooldown = 1.0
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=5, host_breaker_cooldown=cooldown)
    _, sim_url = await procs.start_simulator("simulator")
    proxy = CountingProxy(sim_url)
    proxy_url = await proxy.start()
    try:
        _, api_url = await procs.start_api(env)
        workers = [procs.start_worker(env, f"worker-{n}") for n in (1, 2)]
        sim, api = Simulator(http, sim_url), Api(http, api_url)
        policy = {"initial_wait_time": 0.2, "backoff_factor": 1.5, "jitter": 0.05,
                  "max_interval": 0.5, "max_wait_time": 40.0, "max_attempts": 16}  # fmt: skip
        jobs = await sim.create_jobs([{"duration": 8.0} for _ in range(40)])
        plan = [
            Planned(None, "completed", policy, status_url=f"{proxy_url}/jobs/{j['id']}/status")
            for j in jobs
        ]
        registered = await register_all(sim, api, plan)
        jobs_end = time.monotonic() + 7.5  # (created just before registration)

        async def every_watch_polled() -> bool:
            return len(proxy.per_job()) == len(jobs)

        await poll_until(every_watch_polled, timeout=10, what="every watch polled")
        proxy.failing = True
        outage_began = time.monotonic()
        while time.monotonic() - outage_began < 4.0:
            procs.check_alive()
            await asyncio.sleep(0.1)  # a fault of fixed length; watch the processes
        proxy.failing = False
        outage_ended = time.monotonic()
        await wait_all_done(api, len(jobs), timeout=30, alive=procs.check_alive)
        done = time.monotonic()
        await verify_final(api, registered)
        status = await api.status()
        watches = await api.list_all()
        assert all(w.running() for w in workers)
    finally:
        await proxy.aclose()

    during = [(a.at, a.status) for a in proxy.arrivals if outage_began <= a.at < outage_ended]
    failed = [t for t, code in during if code == 503]
    # The breaker opens once its window holds 10 polls, most failing, and the reports of the
    # requests already sent arrive: give that half a second.
    settled = outage_began + 0.5
    probes = [t for t in failed if t >= settled]
    gaps = [round(b - a, 2) for a, b in pairwise(probes)]
    print(
        f"503 for {outage_ended - outage_began:.1f}s: {len(failed)} requests, "
        f"{len(failed) - len(probes)} before the breaker settled, then probes at gaps {gaps}; "
        f"all done {done - jobs_end:.1f}s after the jobs ended; hosts {status.get('hosts')}"
    )
    assert len(failed) - len(probes) < 60, "the breaker took long to open"
    assert len(probes) <= (outage_ended - settled) / cooldown + 1, probes
    assert all(gap >= cooldown * 0.9 for gap in gaps), gaps
    (host,) = status["hosts"]
    assert host["breaker_trips"] >= 1 and host["breaker"] == "closed"
    for watch in watches:
        assert watch["state"] == "completed", watch
        assert watch["attempts"] <= 16
        finished = datetime.fromisoformat(watch["finished_at"])
        assert finished < datetime.fromisoformat(watch["deadline"]), watch  # no last attempt held
    assert done - jobs_end < 10
