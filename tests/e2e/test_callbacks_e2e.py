"""Push callbacks with real processes: an API, a worker, the simulator and the shared Redis. A
callback to a watch whose next poll is far out makes the worker poll it within about 100 ms
(Redis time from the callback's arrival to the watch's end), with one request, however many
callbacks come."""

from __future__ import annotations

import asyncio
import json
import statistics

import httpx
import pytest
import redis.asyncio as aioredis

from .helpers import Simulator
from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]

WATCHES = 5
JOB_SECONDS = 1.0
# A watch with callbacks makes its first poll at initial_wait_time: 5 minutes out.
SPARSE = {"initial_wait_time": 300, "max_interval": 300, "max_wait_time": 600, "adaptive": False}


async def redis_ms(redis: aioredis.Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_a_callback_makes_the_watch_poll_within_100_ms(
    procs: Processes, namespace: str, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, min_poll_interval=1)
    api_proc, api = await procs.start_api(env)
    worker = procs.start_worker(env)
    _, sim_url = await procs.start_simulator()
    simulator = Simulator(http, sim_url)

    def alive() -> None:
        assert api_proc.running and worker.running, procs.report()

    jobs = await simulator.create_jobs([{"duration": JOB_SECONDS}] * WATCHES)
    watches = []
    for job in jobs:
        body = {"status_url": job["status_url"], "callback": True, "policy": SPARSE}
        response = await http.post(f"{api}/v1/watches", json=body)
        assert response.status_code == 201, response.text
        watches.append(response.json())

    async def first_polls_planned() -> bool:  # at initial_wait_time: the push comes first
        got = [(await http.get(f"{api}/v1/watches/{w['id']}")).json() for w in watches]
        return all(w["attempts"] == 0 and w["next_poll_at"] != w["created_at"] for w in got)

    await poll_until(first_polls_planned, timeout=20, what="every first poll planned", alive=alive)
    await asyncio.sleep(JOB_SECONDS + 0.2)  # every job has ended; no poll is due for minutes

    latencies = []
    for watch, job in zip(watches, jobs, strict=True):
        called_at = await redis_ms(shared_redis)
        answers = await asyncio.gather(
            http.post(watch["callback_url"], content=b'{"status": "done"}'),
            *(http.get(watch["callback_url"]) for _ in range(20)),
        )
        codes = [a.status_code for a in answers]
        # Those that come after the early poll ended the watch find it ended: 404.
        assert 202 in codes and set(codes) <= {202, 404}, codes

        async def ended(watch_id: str = watch["id"]) -> dict[str, object] | None:
            got: dict[str, object] = (await http.get(f"{api}/v1/watches/{watch_id}")).json()
            return got if got["state"] == "completed" else None

        await poll_until(ended, timeout=10, what="the early poll", interval=0.01)
        details = await simulator.job(job["id"])
        assert details["requests"] == 1  # one early poll for 21 callbacks, none before
        latencies.append(await finish_ms(shared_redis, namespace, watch["id"]) - called_at)

    print(f"callback -> poll saved (ms, Redis time): {latencies}")
    assert statistics.median(latencies) < 100, latencies
    assert max(latencies) < 500, latencies


async def finish_ms(redis: aioredis.Redis, namespace: str, watch_id: str) -> int:
    """When the watch ended (Redis ms), from its stored document."""
    raw = await redis.get(f"vtw:{{{namespace}}}:w:{watch_id}")
    assert raw is not None
    finished: int = json.loads(raw)["finished_at"]
    return finished


async def test_pushes_the_simulator_sends_end_watches_and_lost_ones_are_caught_by_the_safety_net(
    procs: Processes, namespace: str, http: httpx.AsyncClient
) -> None:
    """Register first, create the job after with the watch's callback_url (the job id chosen
    by the caller), as with a provider that pushes: a pushed job ends its watch at once with one
    request; a job whose push is lost is found by the safety-net poll at initial_wait_time."""
    env = service_env(SHARED_REDIS_URL, namespace, min_poll_interval=1)
    _, api = await procs.start_api(env)
    procs.start_worker(env)
    _, sim_url = await procs.start_simulator()
    simulator = Simulator(http, sim_url)
    net = {"initial_wait_time": 4, "max_interval": 300, "max_wait_time": 60}
    watches = {}
    for job_id, loss in (("pushed", 0.0), ("lost", 1.0)):
        body = {"status_url": f"{sim_url}/jobs/{job_id}/status", "callback": True, "policy": net}
        watch = (await http.post(f"{api}/v1/watches", json=body)).json()
        await simulator.create_jobs(
            [
                {"id": job_id, "duration": 0.5, "callback_url": watch["callback_url"]}
                | {"callback_loss_rate": loss}
            ]
        )
        watches[job_id] = watch

    async def ended(watch_id: str) -> dict[str, object] | None:
        got: dict[str, object] = (await http.get(f"{api}/v1/watches/{watch_id}")).json()
        return got if got["state"] != "pending" else None

    pushed = await poll_until(lambda: ended(watches["pushed"]["id"]), timeout=3, what="the push")
    assert pushed["state"] == "completed" and pushed["attempts"] == 1, pushed
    lost = await poll_until(lambda: ended(watches["lost"]["id"]), timeout=10, what="the net")
    assert lost["state"] == "completed" and lost["attempts"] == 1, lost
    details = {job_id: await simulator.job(job_id) for job_id in watches}
    assert details["pushed"]["callback"] == "sent" and details["lost"]["callback"] == "lost"
    assert details["pushed"]["requests"] == details["lost"]["requests"] == 1
