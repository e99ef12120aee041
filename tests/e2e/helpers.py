"""HTTP helpers of the end-to-end tests: the simulator, the API, and the final checks."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis

from service.store.keys import Keys

from .procs import poll_until

T = TypeVar("T")
TENANT = "default"  # the open tenant: no API keys on loopback
TERMINAL = ("completed", "error", "timeout", "cancelled")
# Short polls so jobs of a few seconds end quickly: 0.1 s, then x1.5 up to 0.5 s.
FAST_POLICY: dict[str, float] = {
    "initial_wait_time": 0.1,
    "backoff_factor": 1.5,
    "jitter": 0.05,
    "max_interval": 0.5,
    "max_wait_time": 60.0,
}


def http_client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(timeout=15.0, limits=limits, trust_env=False)


async def gather_limited(
    calls: Iterable[Callable[[], Awaitable[T]]], concurrency: int = 32
) -> list[T]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


class Simulator:
    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url

    async def create_jobs(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self.http.post(f"{self.url}/jobs", json={"jobs": specs})
        assert response.status_code == 201, response.text
        jobs: list[dict[str, Any]] = response.json()["jobs"]
        return jobs

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        details: dict[str, Any] = response.json()
        return details

    async def jobs(self, job_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        ids = list(job_ids)
        details = await gather_limited([lambda i=i: self.job(i) for i in ids])
        return dict(zip(ids, details, strict=True))

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/stats")
        assert response.status_code == 200, response.text
        stats: dict[str, Any] = response.json()
        return stats


class Api:
    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url

    async def register(
        self,
        status_url: str,
        policy: dict[str, float],
        metadata: dict[str, Any],
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "status_url": status_url,
            "policy": policy,
            "metadata": metadata,
            "webhook_url": webhook_url,
        }
        # As a careful client does: a request whose answer was lost (a connection the server
        # closed under a burst) is sent again with its Idempotency-Key, never registered twice.
        key = {"Idempotency-Key": secrets.token_hex(8)}
        for attempt in range(3):
            try:
                response = await self.http.post(f"{self.url}/v1/watches", json=body, headers=key)
                break
            except httpx.TransportError:
                if attempt == 2:
                    raise
        assert response.status_code in (200, 201), response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def get(self, watch_id: str) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/v1/watches/{watch_id}")
        assert response.status_code == 200, response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def list_all(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every watch of the tenant, paging with the cursor."""
        watches: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 500}
            if state is not None:
                params["state"] = state
            if cursor is not None:
                params["cursor"] = cursor
            response = await self.http.get(f"{self.url}/v1/watches", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            watches += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return watches

    async def status(self) -> dict[str, Any]:
        response = await self.http.get(f"{self.url}/v1/status")
        assert response.status_code == 200, response.text
        summary: dict[str, Any] = response.json()
        return summary


@dataclass(frozen=True)
class Planned:
    """One watch a test registers: the job behind it and the terminal state it must reach."""

    job: dict[str, Any] | None  # a simulator job spec; None: `status_url` is given
    expected: str
    policy: dict[str, float]
    status_url: str | None = None


@dataclass(frozen=True)
class Registered:
    watch_id: str
    job_id: str | None
    expected: str


async def register_all(
    sim: Simulator, api: Api, plan: list[Planned], chunk: int = 100
) -> list[Registered]:
    """Create the jobs and register their watches, `chunk` at a time, so that each job starts
    (the simulator's clock) just before its watch is registered."""
    registered: list[Registered] = []
    for start in range(0, len(plan), chunk):
        part = plan[start : start + chunk]
        specs = [p.job for p in part if p.job is not None]
        jobs = iter(await sim.create_jobs(specs) if specs else [])
        targets: list[tuple[Planned, str, str | None]] = []
        for p in part:
            if p.job is None:
                assert p.status_url is not None
                targets.append((p, p.status_url, None))
            else:
                job = next(jobs)
                targets.append((p, job["status_url"], job["id"]))
        watches = await gather_limited(
            [
                lambda p=p, url=url, job_id=job_id: api.register(
                    url, p.policy, {"job": job_id, "expected": p.expected}
                )
                for p, url, job_id in targets
            ]
        )
        for (p, _, job_id), watch in zip(targets, watches, strict=True):
            assert watch["state"] == "pending", watch
            registered.append(Registered(watch["id"], job_id, p.expected))
    return registered


async def register_ahead(
    sim: Simulator, api: Api, plan: list[Planned], webhook_url: str | None = None
) -> list[Registered]:
    """Register every watch first, then create all their jobs in one batch: the jobs' clocks
    start together, after registration, so all the watches are in flight at once.

    The status URLs name the jobs the fresh simulator will create (`j1`, `j2`, ...; checked
    below), so no worker may run before this returns: a poll would get 404 (`error`)."""
    stats = await sim.stats()
    assert stats["jobs"] == 0 and stats["requests"] == 0, "needs a fresh simulator, no workers"
    job_ids = [f"j{n}" for n in range(1, len(plan) + 1)]
    watches = await gather_limited(
        [
            lambda p=p, job_id=job_id: api.register(
                f"{sim.url}/jobs/{job_id}/status",
                p.policy,
                {"job": job_id, "expected": p.expected},
                webhook_url,
            )
            for p, job_id in zip(plan, job_ids, strict=True)
        ]
    )
    specs = [p.job for p in plan]
    assert all(spec is not None for spec in specs)
    jobs = await sim.create_jobs([spec for spec in specs if spec is not None])
    assert [job["id"] for job in jobs] == job_ids, "the simulator numbers jobs differently"
    assert (await sim.stats())["requests"] == 0, "a worker polled before the jobs existed"
    return [
        Registered(watch["id"], job_id, p.expected)
        for watch, job_id, p in zip(watches, job_ids, plan, strict=True)
    ]


async def wait_all_done(
    api: Api, total: int, *, timeout: float, alive: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Poll `GET /v1/status` until no watch is pending; returns that summary."""

    last: dict[str, Any] = {}

    async def done() -> dict[str, Any] | None:
        last.update(await api.status())
        return dict(last) if last["by_state"]["pending"] == 0 else None

    try:
        summary = await poll_until(
            done, timeout=timeout, what="0 pending watches", interval=0.25, alive=alive
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last GET /v1/status: {last}") from None
    assert summary["total"] == total, summary
    return summary


async def raw_counts(redis: aioredis.Redis, namespace: str, partitions: int = 1) -> dict[str, int]:
    """The counts hashes as stored, summed over the partitions (the API clamps negative counts
    to 0; this does not)."""
    total: dict[str, int] = {}
    for part in Keys(namespace, partitions).parts:
        for k, v in (await redis.hgetall(part.counts(TENANT))).items():
            field = k.decode() if isinstance(k, bytes) else k
            total[field] = total.get(field, 0) + int(v)
    return total


async def verify_final(
    api: Api,
    registered: list[Registered],
    redis: aioredis.Redis | None = None,
    namespace: str | None = None,
    partitions: int = 1,
) -> Counter[str]:
    """Every watch exists once, in its expected terminal state; the totals agree with it."""
    watches = await api.list_all()
    ids = [w["id"] for w in watches]
    assert len(ids) == len(set(ids)), "a watch is listed twice"
    expected = {r.watch_id: r.expected for r in registered}
    missing = expected.keys() - set(ids)
    extra = set(ids) - expected.keys()
    assert not missing, f"{len(missing)} watches lost, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} unexpected watches, e.g. {sorted(extra)[:5]}"
    wrong = [
        (w["id"], w["metadata"], w["state"], w["reason"], w["attempts"], w["last_error"])
        for w in watches
        if w["state"] != expected[w["id"]]
    ]
    assert not wrong, f"{len(wrong)} watches in the wrong state, e.g. {wrong[:5]}"
    for w in watches:
        assert w["finished_at"] is not None and w["next_poll_at"] is None, w
        assert w["attempts"] >= 1, w
    by_state = Counter(w["state"] for w in watches)
    summary = await api.status()
    assert summary["total"] == len(expected), summary
    assert summary["by_state"] == {s: by_state.get(s, 0) for s in ("pending", *TERMINAL)}, (
        summary,
        by_state,
    )
    for state, count in by_state.items():  # the per-state listing agrees too
        assert len(await api.list_all(state)) == count, state
    if redis is not None and namespace is not None:
        counts = await raw_counts(redis, namespace, partitions)
        stored = {s: counts.get(s, 0) for s in ("pending", *TERMINAL)}
        assert stored == {s: by_state.get(s, 0) for s in ("pending", *TERMINAL)}, counts
    return by_state
