"""Tenants on shared hosts with real processes (DESIGN.md "Tenants on shared hosts"): an API
with two tenants' keys, two workers, and upstreams on loopback.

- budget starvation: one tenant's 400 watches due every second on a host of 10 requests/s do
  not keep another tenant's 10 watches from seeing their jobs end (max-min fair shares);
- breaker hijack: one tenant's 30 watches of a path that answers 500 open that tenant's
  breaker only; another tenant's healthy watches of the same host and port still complete;
- redirects: a status URL that redirects 8 times costs its host one request per poll (the
  workers do not follow redirects; the watch ends `error`, naming where it led).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from aiohttp import web

from bench._proxy import CountingProxy, busiest_window, per_second

from .faults import serve
from .helpers import Api, Simulator, gather_limited, http_client
from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

KEYS = {"a": "tenant-a-key-0123456789abcdef", "b": "tenant-b-key-0123456789abcdef"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
TERMINAL = frozenset({"completed", "error", "timeout", "cancelled"})


@asynccontextmanager
async def tenant(url: str, name: str) -> AsyncIterator[Api]:
    """The API as tenant `name` sees it (its key on every request)."""
    async with http_client() as client:
        client.headers["authorization"] = f"Bearer {KEYS[name]}"
        yield Api(client, url)


async def register_many(api: Api, urls: list[str], policy: dict[str, float]) -> list[str]:
    watches = await gather_limited([lambda u=u: api.register(u, policy, {}) for u in urls])
    assert all(w["state"] == "pending" for w in watches), watches
    return [w["id"] for w in watches]


async def wait_ended(
    api: Api, ids: list[str], *, timeout: float, procs: Processes
) -> list[dict[str, Any]]:
    """Poll until every watch of `ids` has ended; on timeout, fail naming those still
    pending and what they saw."""

    async def ended() -> list[dict[str, Any]] | None:
        watches = await gather_limited([lambda i=i: api.get(i) for i in ids])
        return watches if all(w["state"] in TERMINAL for w in watches) else None

    try:
        return await poll_until(
            ended, timeout=timeout, what="the watches to end", interval=0.2, alive=procs.check_alive
        )
    except AssertionError:
        watches = await gather_limited([lambda i=i: api.get(i) for i in ids])
        pending = [
            (w["id"], w["attempts"], w["last_polled_at"], w["last_error"])
            for w in watches
            if w["state"] not in TERMINAL
        ]
        raise AssertionError(
            f"{len(pending)} of {len(ids)} watches still pending after {timeout:g}s: {pending}"
        ) from None


def finished(watch: dict[str, Any]) -> float:
    """When the watch ended, as a Unix time."""
    return datetime.fromisoformat(watch["finished_at"]).timestamp()


async def hold(seconds: float, procs: Processes) -> None:
    """Let a fixed length of time pass (a phase of the scenario), watching the processes."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        procs.check_alive()
        await asyncio.sleep(0.1)


async def test_a_tenant_over_a_hosts_budget_leaves_another_its_fair_share(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    """`VTW_HOST_RATE_LIMIT=10` (default burst: 1). Tenant A keeps 400 watches of long jobs due
    every second on the host (40 times its budget); 5 s later tenant B registers 10 watches of
    jobs that end 3 s after. Every one of B's watches completes within 8 s of its job's end,
    and the host never sees more than limit + burst + 2 requests within any one second."""
    limit, burst = 10, 1
    env = service_env(
        SHARED_REDIS_URL, namespace, lease_seconds=5, host_rate_limit=limit, api_keys=API_KEYS
    )
    _, sim_url = await procs.start_simulator("simulator")
    proxy = CountingProxy(sim_url)
    proxy_url = await proxy.start()
    try:
        _, api_url = await procs.start_api(env)
        sim = Simulator(http, sim_url)
        every_second = {"initial_wait_time": 1.0, "backoff_factor": 1.0, "jitter": 0.1,
                        "max_interval": 1.0}  # fmt: skip
        async with tenant(api_url, "a") as a, tenant(api_url, "b") as b:
            a_jobs = await sim.create_jobs([{"duration": 3600.0} for _ in range(400)])
            a_urls = [f"{proxy_url}/jobs/{j['id']}/status" for j in a_jobs]
            await register_many(a, a_urls, {**every_second, "max_wait_time": 600.0})
            for n in (1, 2):
                procs.start_worker(env, f"worker-{n}")

            async def a_polled() -> bool:
                return len(proxy.arrivals) > 0

            await poll_until(a_polled, timeout=15, what="A's first poll", alive=procs.check_alive)
            await hold(5.0, procs)
            b_began = time.monotonic()
            b_ends = time.time() + 3.0  # the jobs end after this: latencies are upper bounds
            b_jobs = await sim.create_jobs([{"duration": 3.0} for _ in range(10)])
            b_urls = [f"{proxy_url}/jobs/{j['id']}/status" for j in b_jobs]
            b_ids = await register_many(b, b_urls, {**every_second, "max_wait_time": 60.0})
            b_watches = await wait_ended(b, b_ids, timeout=3.0 + 8.0 + 2.0, procs=procs)
            b_done = time.monotonic()
            status = await b.status()
    finally:
        await proxy.aclose()

    b_job_ids = {j["id"] for j in b_jobs}
    during = [a for a in proxy.arrivals if b_began <= a.at < b_done]
    b_requests = sum(1 for a in during if a.job in b_job_ids)
    latencies = sorted(round(finished(w) - b_ends, 2) for w in b_watches)
    times = proxy.times()
    fixed, sliding = busiest_window(times)
    print(
        f"{len(times)} requests at the host; busiest second: {fixed} (fixed), {sliding} "
        f"(sliding); answers {dict(proxy.answered())}; while B's watches ran "
        f"({b_done - b_began:.1f}s): {b_requests} of B's requests, "
        f"{len(during) - b_requests} of A's; B done after its jobs' end (s): {latencies}; "
        f"B's attempts {sorted(w['attempts'] for w in b_watches)}; hosts {status.get('hosts')}"
    )
    print("requests per second:", per_second(times))
    assert [w["state"] for w in b_watches] == ["completed"] * 10, b_watches
    assert max(latencies) <= 8.0, latencies
    assert sliding <= limit + burst + 2, f"{sliding} requests within one second"


@dataclass
class BrokenAndHealthy:
    """One upstream (one host and port) in the test process: `/broken/{n}` always answers
    500; `/jobs/{n}/status` is pending until `ends[n]` (monotonic), then completed."""

    ends: dict[str, float] = field(default_factory=dict)
    broken: list[float] = field(default_factory=list)  # arrival times
    healthy: Counter[str] = field(default_factory=Counter)

    async def fail(self, request: web.Request) -> web.Response:
        self.broken.append(time.monotonic())
        return web.json_response({"detail": "internal error"}, status=500)

    async def status(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        self.healthy[job] += 1
        done = time.monotonic() >= self.ends.get(job, float("inf"))
        return web.json_response({"result": "completed" if done else "pending"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/broken/{n}", self.fail)
        app.router.add_get("/jobs/{job}/status", self.status)
        return app


def host_entry(status: dict[str, Any]) -> dict[str, Any] | None:
    hosts = status.get("hosts") or []
    return hosts[0] if hosts else None


async def test_a_tenants_broken_path_does_not_open_the_breaker_for_another(
    namespace: str, procs: Processes
) -> None:
    """Tenant A's 30 watches poll a path that always answers 500: A's breaker for the host's
    port opens (cool-down 30 s) and A's polls of it stop. Then tenant B registers 5 watches of
    the same host and port, jobs ending 3 s later, deadline 15 s: all complete, soon after
    their jobs end, while A's breaker stays open and the port's (B's view) stays closed."""
    cooldown = 30.0
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        lease_seconds=5,
        host_breaker_cooldown=cooldown,
        api_keys=API_KEYS,
    )
    upstream = BrokenAndHealthy()
    fast = {"initial_wait_time": 0.2, "backoff_factor": 1.5, "jitter": 0.05, "max_interval": 0.5}
    async with AsyncExitStack() as stack:
        runner, url = await serve(upstream.app())
        stack.push_async_callback(runner.cleanup)
        _, api_url = await procs.start_api(env)
        a = await stack.enter_async_context(tenant(api_url, "a"))
        b = await stack.enter_async_context(tenant(api_url, "b"))
        a_urls = [f"{url}/broken/{n}" for n in range(30)]
        await register_many(a, a_urls, {**fast, "max_wait_time": 120.0})
        for n in (1, 2):
            procs.start_worker(env, f"worker-{n}")

        async def a_breaker_open() -> dict[str, Any] | None:
            host = host_entry(await a.status())
            return host if host is not None and host["breaker"] == "open" else None

        a_host = await poll_until(
            a_breaker_open, timeout=15, what="A's breaker to open", alive=procs.check_alive
        )
        tripped = time.monotonic()
        broken_at_trip = len(upstream.broken)
        b_began = time.time()
        ends = time.monotonic() + 3.0
        upstream.ends.update({f"b{n}": ends for n in range(5)})
        b_urls = [f"{url}/jobs/b{n}/status" for n in range(5)]
        b_ids = await register_many(b, b_urls, {**fast, "max_wait_time": 15.0})
        b_watches = await wait_ended(b, b_ids, timeout=15.0 + 3.0, procs=procs)
        b_done = time.monotonic()
        a_status, b_status = await a.status(), await b.status()

    settled = tripped + 0.5  # polls admitted just before the trip may still arrive
    broken_after = [t for t in upstream.broken if t >= settled]
    latencies = sorted(round(finished(w) - (b_began + 3.0), 2) for w in b_watches)
    print(
        f"A's breaker open after {broken_at_trip} requests to the broken path ({a_host}); "
        f"{len(broken_after)} more in the {b_done - settled:.1f}s after; B's watches: "
        f"{[w['state'] for w in b_watches]}, done after their jobs' end (s): {latencies}, "
        f"requests per job {dict(upstream.healthy)}; A sees {host_entry(a_status)}, "
        f"B sees {host_entry(b_status)}"
    )
    wrong = [(w["state"], w["reason"], w["last_error"]) for w in b_watches]
    assert all(w["state"] == "completed" for w in b_watches), wrong
    assert max(latencies) <= 3.0, latencies
    assert not broken_after, "A's broken path was polled while its breaker was open"
    assert b_done - tripped < cooldown
    a_host, b_host = host_entry(a_status), host_entry(b_status)
    assert a_host is not None and a_host["breaker"] == "open", a_status
    assert b_host is not None and b_host["breaker"] == "closed", b_status


@dataclass
class Redirects:
    """`/r/{watch}/{hops}` answers 302 to `/r/{watch}/{hops - 1}`, and `/r/{watch}/0` to
    `/status/{watch}` (completed): every request the host receives is noted."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)

    async def hop(self, request: web.Request) -> web.Response:
        self.arrivals.append((time.monotonic(), request.path))
        watch, hops = request.match_info["watch"], int(request.match_info["hops"])
        target = f"/r/{watch}/{hops - 1}" if hops > 0 else f"/status/{watch}"
        raise web.HTTPFound(target)

    async def final(self, request: web.Request) -> web.Response:
        self.arrivals.append((time.monotonic(), request.path))
        return web.json_response({"result": "completed"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/r/{watch}/{hops}", self.hop)
        app.router.add_get("/status/{watch}", self.final)
        return app


async def test_redirects_are_not_followed_past_the_hosts_budget(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    """`VTW_HOST_RATE_LIMIT=5`; 20 watches whose status URLs redirect 8 times on the same host.
    The host never receives more than limit + 2 requests within one second, one per watch
    (no hop followed), and every watch ends `error`, its reason naming where the redirect led
    and that it was not followed."""
    limit = 5
    env = service_env(SHARED_REDIS_URL, namespace, lease_seconds=5, host_rate_limit=limit)
    upstream = Redirects()
    async with AsyncExitStack() as stack:
        runner, url = await serve(upstream.app())
        stack.push_async_callback(runner.cleanup)
        _, api_url = await procs.start_api(env)
        api = Api(http, api_url)
        policy = {"initial_wait_time": 0.1, "backoff_factor": 1.5, "jitter": 0.05,
                  "max_interval": 0.5, "max_wait_time": 30.0}  # fmt: skip
        ids = await register_many(api, [f"{url}/r/w{n}/8" for n in range(20)], policy)
        began = time.monotonic()
        for n in (1, 2):
            procs.start_worker(env, f"worker-{n}")
        watches = await wait_ended(api, ids, timeout=20, procs=procs)
        took = time.monotonic() - began

    times = [at for at, _ in upstream.arrivals]
    fixed, sliding = busiest_window(times)
    paths = Counter(path for _, path in upstream.arrivals)
    reasons = Counter(
        (w["reason"] or "").replace(f"/r/w{n}/", "/r/w*/") for n, w in enumerate(watches)
    )
    print(
        f"{len(times)} requests at the host in {took:.1f}s; busiest second: {fixed} (fixed), "
        f"{sliding} (sliding); per second {per_second(times)}; states "
        f"{dict(Counter(w['state'] for w in watches))}; reasons {dict(reasons)}"
    )
    assert sliding <= limit + 2, f"{sliding} requests within one second"
    assert paths == Counter({f"/r/w{n}/8": 1 for n in range(20)}), paths
    for n, watch in enumerate(watches):
        assert watch["state"] == "error", watch
        assert "not followed" in watch["reason"], watch
        assert f"/r/w{n}/7" in watch["reason"], watch
        assert watch["attempts"] == 1, watch
