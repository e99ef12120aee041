"""What the measurements run against: the simulator's jobs, watches registered through the
store, and a worker set up for loopback (as a process's environment, or in this process)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, cast

import aiohttp

from bench._config import Config
from bench._procs import Proc, child_env
from service.api.schemas import Policy, WatchCreate
from service.domain import WatchDoc
from service.settings import Settings
from service.store.queue import Claimed
from service.store.watches import Store
from worker.poller import Poller
from worker.process import Worker, tune_gc

TENANT = "bench"
LOOPBACK = "127.0.0.0/8,::1/128"
JOB_SECONDS = 86_400.0  # simulator jobs stay pending for the whole run
DEADLINE_SECONDS = 86_400.0
REGISTER_PARALLEL = 64
HOST_RATE_LIMIT = 1_000_000.0  # the settings' maximum (burst: a twentieth of it)


class Simulator:
    """The upstream simulator process, reached over `session`."""

    def __init__(self, proc: Proc, base: str, session: aiohttp.ClientSession) -> None:
        self.proc, self.base, self.session = proc, base, session

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/stats") as response:
            return cast(dict[str, Any], await response.json())

    async def create_jobs(self, count: int, chunk: int = 5000) -> list[str]:
        """`count` jobs that stay pending for the whole run; returns their status URLs."""
        urls: list[str] = []
        while len(urls) < count:
            body = {"jobs": [{"duration": JOB_SECONDS}] * min(chunk, count - len(urls))}
            async with self.session.post(f"{self.base}/jobs", json=body) as response:
                response.raise_for_status()
                urls += [job["status_url"] for job in (await response.json())["jobs"]]
        return urls


def spec_for(url: str, policy: Policy, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A watch spec exactly as the API stores it."""
    return WatchCreate(status_url=url, policy=policy, metadata=metadata or {}).spec()


async def register_all(
    store: Store, specs: Iterable[dict[str, Any]], deadline: float = DEADLINE_SECONDS
) -> int:
    """Register every spec through `Store.register`, REGISTER_PARALLEL at a time."""
    pending = iter(specs)
    count = 0

    async def register_some() -> None:
        nonlocal count
        for spec in pending:
            await store.register(TENANT, spec, deadline)
            count += 1

    await asyncio.gather(*(register_some() for _ in range(REGISTER_PARALLEL)))
    return count


async def delete_namespace(store: Store) -> int:
    """Unlink every key of the store's namespace, of every partition (one by one: on a cluster
    they live on every node); returns how many."""
    pattern = f"vtw:{{{store.keys.namespace}*"
    keys = [key async for key in store.redis.scan_iter(match=pattern, count=1000)]
    for start in range(0, len(keys), 1000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 1000]:
                pipe.delete(key)
            await pipe.execute()
    return len(keys)


async def release_leases(store: Store) -> int:
    """Make leased watches due now (a lease left by a stopped worker); returns how many."""
    doc = cast(WatchDoc, {})
    released = 0
    for part in store.keys.parts:
        held = cast(dict[str, str], await store.redis.hgetall(part.leases))
        await store.schedule.release([Claimed(i, token, doc) for i, token in held.items()])
        released += len(held)
    return released


def worker_settings(cfg: Config, redis_url: str, namespace: str) -> dict[str, Any]:
    """The worker's `Settings` fields for a run: loopback admitted, concurrency C, the host
    budget on but far above what one worker can poll."""
    return {
        "redis_url": redis_url,
        "namespace": namespace,
        "allowed_networks": LOOPBACK,
        "worker_concurrency": cfg.concurrency,
        "per_host_concurrency": cfg.host_limit,
        "min_poll_interval": 0.01,  # the saturating policy polls every 0.05 s
        # The host budget is on (a token take per batch, a report per save) but never the
        # limit: every watch polls one loopback host, thousands of times a second.
        "host_rate_limit": HOST_RATE_LIMIT,
    }


def worker_env(cfg: Config, redis_url: str, namespace: str) -> dict[str, str]:
    """The same settings as the `VTW_*` environment of a worker process."""
    return settings_env(worker_settings(cfg, redis_url, namespace))


def settings_env(fields: dict[str, Any]) -> dict[str, str]:
    """`Settings` fields as the `VTW_*` environment of a child process (no other `VTW_*`)."""
    return child_env({f"VTW_{name.upper()}": str(value) for name, value in fields.items()})


@contextlib.asynccontextmanager
async def in_process_worker(cfg: Config, redis_url: str, namespace: str) -> AsyncIterator[Poller]:
    """A worker running in this process, for as long as the block; yields its poller. The
    process gets the garbage-collector settings of `vtwatch worker`, as measured elsewhere."""
    tune_gc()
    worker = Worker(Settings(**worker_settings(cfg, redis_url, namespace)))
    task = asyncio.create_task(worker.run())
    try:
        while worker.poller is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield worker.poller
    finally:
        worker.stop()
        await task
