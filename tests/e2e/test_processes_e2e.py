"""One machine, all its cores (issue 20): `vtwatch worker --processes 2` and `vtwatch api
--workers 2` with real processes, the shared Redis and the simulator. A child SIGKILLed is
restarted and the leases it held are picked up; SIGTERM drains every child within the grace
period; two children never poll one watch at once; an event stream on a two-process API sees
its watch end; each worker child serves its own metrics port (base + index)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from .helpers import FAST_POLICY, Api, Simulator, register_all, verify_final, wait_all_done
from .procs import (
    SHARED_REDIS_URL,
    Proc,
    Processes,
    free_port,
    free_port_block,
    poll_until,
    service_env,
    vtwatch,
)
from .test_events_e2e import follow
from .test_faults import leases, plan_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

STARTED = re.compile(r"^(worker|api) process (\d+) started \(pid (\d+)\)$")


def events(proc: Proc) -> list[dict[str, Any]]:
    """The supervisor's and its children's JSON log lines (stdout is a file: JSON)."""
    lines = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def child_pids(proc: Proc) -> dict[int, list[int]]:
    """Each child index's pids, in the order they were started."""
    pids: dict[int, list[int]] = {}
    for event in events(proc):
        match = STARTED.match(event["msg"]) if event["logger"] == "worker.supervisor" else None
        if match:
            pids.setdefault(int(match[2]), []).append(int(match[3]))
    return pids


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def children_started(proc: Proc, count: int, procs: Processes) -> dict[int, list[int]]:
    async def started() -> dict[int, list[int]] | None:
        pids = child_pids(proc)
        return pids if len(pids) == count else None

    return await poll_until(
        started, timeout=30, what=f"{count} children of {proc.name}", alive=procs.check_alive
    )


def start_workers(procs: Processes, env: dict[str, str], count: int = 2) -> Proc:
    return procs.start("workers", [*vtwatch(), "worker", "--processes", str(count)], env)


async def inflight_polls(http: httpx.AsyncClient, port: int) -> float:
    """A worker child's `vtwatch_inflight_polls`, from its own metrics port."""
    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith("vtwatch_inflight_polls "):
            return float(line.split()[1])
    return 0.0


async def in_flight(sim: Simulator, at_least: int, procs: Processes) -> int:
    async def enough() -> int | None:
        n: int = (await sim.stats())["in_flight"]
        return n if n >= at_least else None

    return await poll_until(
        enough, timeout=20, what=f"{at_least} polls in flight", alive=procs.check_alive
    )


async def test_a_sigkilled_child_is_restarted_and_its_leases_are_picked_up(
    namespace: str, procs: Processes, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=2, shutdown_grace_seconds=2)
    metrics = free_port_block(2)  # one metrics port per child
    _, sim_url = await procs.start_simulator("simulator", "--seed", "20")
    _, api_url = await procs.start_api(env)
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    workers = start_workers(procs, {**env, "VTW_METRICS_PORT": str(metrics)})
    pids = await children_started(workers, 2, procs)
    plan = plan_jobs(random.Random(20), 60, 2.0, 4.0, FAST_POLICY, latency=0.3)
    registered = await register_all(sim, api, plan)

    async def victim_busy() -> float | None:  # child 0 (metrics port base + 0) holds leases
        polls = await inflight_polls(http, metrics)
        return polls if polls >= 2 else None

    await poll_until(victim_busy, timeout=20, what="child 0 polling", alive=procs.check_alive)

    victim = pids[0][0]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    before = await leases(shared_redis, namespace)
    # The dead child's leases stay as they are until they expire (2 s); the live one's are
    # extended or released: two snapshots 1.3 s apart (a measurement window).
    await asyncio.sleep(1.3)
    after = await leases(shared_redis, namespace)
    orphaned = {i for i, token in before.items() if after.get(i) == token}
    assert orphaned, "the killed child held no lease: nothing to pick up"

    async def restarted() -> list[int] | None:
        again = child_pids(workers).get(0, [])
        return again if len(again) == 2 else None

    (_, successor) = await poll_until(
        restarted, timeout=10, what="child 0 restarted", alive=procs.check_alive
    )
    restarts = [e for e in events(workers) if "restarting it in" in e["msg"]]
    assert len(restarts) == 1 and restarts[0]["level"] == "warning", restarts
    assert f"worker process 0 (pid {victim}) killed by SIGKILL" in restarts[0]["msg"]

    await wait_all_done(api, len(plan), timeout=40, alive=procs.check_alive)
    await verify_final(api, registered, shared_redis, namespace)
    watches = {w["id"]: w for w in await api.list_all()}
    assert all(watches[i]["state"] != "pending" for i in orphaned)
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    assert all(d["max_concurrent"] == 1 for d in jobs.values()), jobs
    assert not gone(successor) and not gone(pids[1][0])
    print(
        f"{len(orphaned)} leases orphaned by the kill; all done "
        f"{time.monotonic() - killed_at:.1f}s after it"
    )


async def test_sigterm_drains_every_child_within_the_grace_period(
    namespace: str, procs: Processes, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    grace = 3.0
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=2, shutdown_grace_seconds=grace)
    metrics = free_port_block(2)  # one metrics port per child
    _, sim_url = await procs.start_simulator("simulator", "--seed", "21")
    _, api_url = await procs.start_api(env)
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    workers = start_workers(procs, {**env, "VTW_METRICS_PORT": str(metrics)})
    pids = await children_started(workers, 2, procs)
    plan = plan_jobs(random.Random(21), 30, 5.0, 6.0, FAST_POLICY, latency=1.0)
    await register_all(sim, api, plan)

    async def both_polling() -> list[float] | None:  # polls in flight in each child
        polls = [await inflight_polls(http, metrics + index) for index in (0, 1)]
        return polls if min(polls) >= 1 else None

    polls = await poll_until(
        both_polling, timeout=20, what="both children polling", alive=procs.check_alive
    )

    signalled = time.monotonic()
    workers.send(signal.SIGTERM)
    code = await workers.wait_exit(grace + 5)
    exited_in = time.monotonic() - signalled
    print(f"SIGTERM with {polls} polls in flight: exited {code} after {exited_in:.2f}s")
    assert code == 0, workers.tail()
    assert exited_in < grace + 1.5
    assert all(gone(pid) for pid in (pids[0][0], pids[1][0]))
    log = events(workers)
    stopped = sorted(e["process"] for e in log if e["msg"] == "worker stopped")
    assert stopped == [0, 1], workers.tail()
    assert not any(e["level"] in ("warning", "error") for e in log), workers.tail()
    assert (await sim.stats())["in_flight"] == 0
    assert await leases(shared_redis, namespace) == {}


async def test_two_processes_of_each_poll_nothing_twice_at_once_and_streams_see_the_end(
    namespace: str, procs: Processes, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    """A two-process worker (metrics on base and base + 1) and a two-process API: 100 watches
    end, none polled by both children at once, and event streams (served by either API
    process) see their watches end."""
    metrics = free_port_block(2)  # one metrics port per child
    env = service_env(SHARED_REDIS_URL, namespace, shutdown_grace_seconds=2)
    _, sim_url = await procs.start_simulator("simulator", "--seed", "22")
    port = free_port()
    api_proc = procs.start(
        "api",
        [*vtwatch(), "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env,
    )
    api_url = f"http://127.0.0.1:{port}"
    await procs.wait_http(api_proc, f"{api_url}/healthz")
    await children_started(api_proc, 2, procs)
    workers = start_workers(procs, {**env, "VTW_METRICS_PORT": str(metrics)})
    await children_started(workers, 2, procs)
    for index in (0, 1):
        await procs.wait_http(workers, f"http://127.0.0.1:{metrics + index}/healthz")
    sim, api = Simulator(http, sim_url), Api(http, api_url)

    plan = plan_jobs(random.Random(22), 100, 0.5, 2.0, FAST_POLICY, latency=0.05)
    registered = await register_all(sim, api, plan)
    streams = [
        asyncio.create_task(follow(http, f"{api_url}/v1/watches/{r.watch_id}/events"))
        for r in registered[:6]
    ]
    await wait_all_done(api, len(plan), timeout=40, alive=procs.check_alive)
    await verify_final(api, registered, shared_redis, namespace)
    jobs = await sim.jobs(r.job_id for r in registered if r.job_id is not None)
    twice = {i: d["max_concurrent"] for i, d in jobs.items() if d["max_concurrent"] != 1}
    assert not twice, twice
    watches = {w["id"]: w for w in await api.list_all()}
    mismatched = [
        (r.job_id, jobs[r.job_id]["requests"], watches[r.watch_id]["attempts"])
        for r in registered
        if r.job_id is not None and jobs[r.job_id]["requests"] != watches[r.watch_id]["attempts"]
    ]
    assert not mismatched, mismatched[:10]
    # Each child serves metrics of its own (both polled: each counts polls of its own).
    for index in (0, 1):
        text = (await http.get(f"http://127.0.0.1:{metrics + index}/metrics")).text
        assert "vtwatch_inflight_polls 0.0" in text, text

    ended = await asyncio.wait_for(asyncio.gather(*streams), 20)
    for r, stream in zip(registered, ended, strict=False):
        assert stream[-1]["event"] == "state", stream
        assert stream[-1]["data"]["state"] == r.expected, stream
    served_by = {e.get("process") for e in events(api_proc) if "/events" in e.get("msg", "")}
    print(f"event streams served by API processes {served_by}")

    for proc in (workers, api_proc):
        proc.send(signal.SIGTERM)
        assert await proc.wait_exit(10) == 0, proc.tail()
