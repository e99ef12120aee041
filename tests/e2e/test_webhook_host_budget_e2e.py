"""A webhook receiver's fleet-wide budget with real processes (issue 17, "Every request counts").

An API with two tenants' keys and two `vtwatch worker` processes over the shared Redis,
`VTW_WEBHOOK_HOST_RATE_LIMIT=10` (default burst: 1); an upstream that answers `completed` at
once and a webhook receiver, both in the test process. Tenant A's 60 watches end together, then
tenant B's 5: the receiver never sees more than 13 webhooks in a second from the whole fleet,
each webhook arrives once (one attempt each: a delivery put off by the budget spends none),
and B's 5 arrive within a few seconds while A's are still draining (fair shares).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web

from .faults import serve
from .helpers import Api, gather_limited, http_client
from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

KEYS = {"a": "tenant-a-key-0123456789abcdef", "b": "tenant-b-key-0123456789abcdef"}
API_KEYS = ",".join(f"{tenant}:{key}" for tenant, key in KEYS.items())
LIMIT = 10
BURST = 1  # the default: a twentieth of the limit, at least 1
POLICY = {"initial_wait_time": 0.05, "jitter": 0.0, "max_wait_time": 60.0}


@dataclass
class Endpoints:
    """An upstream whose every job has completed, and a receiver noting each webhook-id."""

    arrivals: list[tuple[float, str]] = field(default_factory=list)

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"result": "completed"})

    async def hook(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.arrivals.append((time.monotonic(), request.headers.get("webhook-id", "")))
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_post("/hooks", self.hook)
        return app

    def times(self, ids: list[str]) -> list[float]:
        wanted = {f"msg_{watch_id}" for watch_id in ids}
        return sorted(at for at, msg in self.arrivals if msg in wanted)


def most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    counts = (sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    return max(counts, default=0)


@asynccontextmanager
async def as_tenant(url: str, name: str) -> AsyncIterator[Api]:
    async with http_client() as client:
        client.headers["authorization"] = f"Bearer {KEYS[name]}"
        yield Api(client, url)


async def register(api: Api, base: str, n: int) -> list[str]:
    watches = await gather_limited(
        [lambda: api.register(f"{base}/status", POLICY, {}, f"{base}/hooks") for _ in range(n)]
    )
    return [w["id"] for w in watches]


async def test_two_workers_keep_a_receiver_within_its_budget_and_share_it_fairly(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        api_keys=API_KEYS,
        lease_seconds=5,
        webhook_host_rate_limit=LIMIT,
    )
    endpoints = Endpoints()
    runner, base = await serve(endpoints.app())
    try:
        _, api_url = await procs.start_api(env)
        workers = [procs.start_worker(env, f"worker-{n}") for n in (1, 2)]
        async with as_tenant(api_url, "a") as a, as_tenant(api_url, "b") as b:
            flood = await register(a, base, 60)

            async def flowing() -> bool:
                return len(endpoints.times(flood)) >= 5

            await poll_until(
                flowing, timeout=20, what="A's webhooks arriving", alive=procs.check_alive
            )
            began = time.monotonic()
            few = await register(b, base, 5)

            async def all_of(ids: list[str]) -> bool:
                return len(set(endpoints.times(ids))) >= len(ids)

            await poll_until(
                lambda: all_of(few), timeout=20, what="B's webhooks", alive=procs.check_alive
            )
            a_by_then = len(endpoints.times(flood))
            await poll_until(
                lambda: all_of(flood), timeout=30, what="A's webhooks", alive=procs.check_alive
            )

            async def all_recorded() -> list[dict[str, Any]] | None:
                watches = [*(await a.list_all()), *(await b.list_all())]
                done = all(w["webhook"]["state"] == "delivered" for w in watches)
                return watches if done and len(watches) == 65 else None

            watches = await poll_until(all_recorded, timeout=10, what="every delivery recorded")
        assert all(w.running() for w in workers)
    finally:
        await runner.cleanup()

    b_times = endpoints.times(few)
    everything = endpoints.times(flood + few)
    per_id = Counter(msg for _, msg in endpoints.arrivals)
    print(
        f"busiest second: {most_in_a_second(everything)} webhooks; A's 60 over "
        f"{max(everything) - min(everything):.1f}s; B's 5 arrived "
        f"{[round(t - began, 2) for t in b_times]} s after registration, when A had "
        f"{a_by_then} of 60"
    )
    assert set(per_id.values()) == {1} and len(per_id) == 65, per_id.most_common(3)
    assert most_in_a_second(everything) <= LIMIT + BURST + 2
    assert all(w["webhook"]["attempts"] == 1 for w in watches), watches
    assert max(b_times) - began <= 3.0
    assert a_by_then <= 50  # A was still draining
