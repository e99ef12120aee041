"""Review fixes of the worker with real processes (`vtwatch api`, `vtwatch worker`; the
upstreams run in the test process, on two loopback addresses, i.e. two hosts):

- one slow host holds at most half of a worker's slots, whatever `VTW_PER_HOST_CONCURRENCY`:
  another tenant's watch on a healthy host is polled at once and meets its deadline;
- `DELETE /v1/watches/{id}` while the worker's poll of the watch is in flight is counted by
  the worker as a lease ended (`vtwatch_leases_ended_total`), not lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from aiohttp import web

from .faults import serve
from .helpers import FAST_POLICY, gather_limited
from .procs import SHARED_REDIS_URL, Processes, free_port, poll_until, service_env
from .test_metrics_e2e import Samples, scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(60)]

KEYS = {"hanging": "key-hanging-tenant", "healthy": "key-healthy-tenant"}


@asynccontextmanager
async def tenant(url: str, name: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {KEYS[name]}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, trust_env=False) as client:
        yield client


async def register(client: httpx.AsyncClient, status_url: str, **policy: float) -> str:
    body = {"status_url": status_url, "policy": {**FAST_POLICY, **policy}}
    response = await client.post("/v1/watches", json=body)
    assert response.status_code == 201, response.text
    watch_id: str = response.json()["id"]
    return watch_id


async def test_a_hanging_host_leaves_another_tenants_healthy_host_its_slots(
    namespace: str, procs: Processes
) -> None:
    """`VTW_WORKER_CONCURRENCY=8`, the per-host limit at its default (64). One tenant's 40
    watches poll a path that never answers (127.0.0.1); then another tenant registers a watch
    of 127.0.0.2 with a 4 s deadline whose job ends 1 s in. Its first poll comes within
    1.5 s and it completes; the hanging host never has more than 4 requests in flight."""
    release = asyncio.Event()
    hanging: list[float] = []
    healthy: list[float] = []

    async def hang(request: web.Request) -> web.Response:
        hanging.append(time.monotonic())
        await release.wait()
        return web.json_response({"result": "pending"})

    job_ends = [0.0]

    async def status(request: web.Request) -> web.Response:
        healthy.append(time.monotonic())
        done = job_ends[0] and time.monotonic() >= job_ends[0]
        return web.json_response({"result": "completed" if done else "pending"})

    slow_app, fast_app = web.Application(), web.Application()
    slow_app.router.add_get("/jobs/{id}/status", hang)
    fast_app.router.add_get("/status", status)
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        worker_concurrency=8,
        lease_seconds=5,
        api_keys=",".join(f"{name}:{key}" for name, key in KEYS.items()),
    )
    async with AsyncExitStack() as stack:
        slow_runner, slow_url = await serve(slow_app, "127.0.0.1")
        stack.push_async_callback(slow_runner.cleanup)
        stack.callback(release.set)  # before the runners close: no request left hanging
        fast_runner, fast_url = await serve(fast_app, "127.0.0.2")
        stack.push_async_callback(fast_runner.cleanup)
        _, api_url = await procs.start_api(env)
        slow_tenant = await stack.enter_async_context(tenant(api_url, "hanging"))
        fast_tenant = await stack.enter_async_context(tenant(api_url, "healthy"))
        await gather_limited(
            [lambda n=n: register(slow_tenant, f"{slow_url}/jobs/j{n}/status") for n in range(40)]
        )
        procs.start_worker(env)

        async def slots_taken() -> bool:
            return len(hanging) >= 4

        await poll_until(slots_taken, timeout=15, what="the hanging host's polls in flight")
        job_ends[0] = time.monotonic() + 1.0
        registered = time.monotonic()
        watch_id = await register(fast_tenant, f"{fast_url}/status", max_wait_time=4.0)

        async def ended() -> dict[str, object] | None:
            watch = (await fast_tenant.get(f"/v1/watches/{watch_id}")).json()
            return watch if watch["state"] != "pending" else None

        watch = await poll_until(ended, timeout=10, what="the healthy watch to end")
        in_flight = len(hanging)

    assert healthy and healthy[0] - registered <= 1.5, healthy[:1]
    assert watch["state"] == "completed", watch
    assert in_flight == 4, f"the hanging host had {in_flight} polls in flight"


async def test_a_cancel_while_the_worker_polls_the_watch_is_a_lease_ended_not_lost(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    release = asyncio.Event()
    arrived: list[float] = []

    async def held(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        await release.wait()
        return web.json_response({"result": "pending"})

    app = web.Application()
    app.router.add_get("/status", held)
    metrics_port = free_port()
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=5, metrics_port=metrics_port)
    async with AsyncExitStack() as stack:
        runner, upstream_url = await serve(app)
        stack.push_async_callback(runner.cleanup)
        stack.callback(release.set)
        _, api_url = await procs.start_api(env)
        procs.start_worker(env)
        body = {"status_url": f"{upstream_url}/status", "policy": FAST_POLICY}
        response = await http.post(f"{api_url}/v1/watches", json=body)
        assert response.status_code == 201, response.text
        watch_id = response.json()["id"]

        async def polling() -> bool:
            return bool(arrived)

        await poll_until(polling, timeout=15, what="the worker's poll", alive=procs.check_alive)
        cancelled = await http.delete(f"{api_url}/v1/watches/{watch_id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        release.set()  # the poll ends; its write meets the fence

        async def counted() -> Samples | None:
            scraped = await scrape(http, f"http://127.0.0.1:{metrics_port}/metrics")
            return scraped if value(scraped, "vtwatch_leases_ended_total") else None

        worked = await poll_until(counted, timeout=10, what="the ended lease counted")
        watch = (await http.get(f"{api_url}/v1/watches/{watch_id}")).json()

    assert value(worked, "vtwatch_leases_ended_total") == 1
    assert value(worked, "vtwatch_lease_lost_total") == 0
    assert watch["state"] == "cancelled" and watch["attempts"] == 0
    assert len(arrived) == 1
