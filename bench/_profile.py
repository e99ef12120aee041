"""A saturated worker in this process under cProfile: the top 15 by cumulative and by own time.

The wall clock (the default) is distorted when other processes take the CPU; the CPU clock is
exact under machine load but slows the worker several times over.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from dataclasses import dataclass

from bench._config import Config
from bench._fixtures import in_process_worker, release_leases
from service.store.watches import Store

TOP = 15


@dataclass(slots=True)
class Profile:
    seconds: float
    polls_per_s: float
    by_cumulative: list[str]
    by_own_time: list[str]


def top(profiler: cProfile.Profile, order: str) -> list[str]:
    """The stats table's header and first TOP rows, sorted by `order`."""
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(TOP)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return [line.rstrip() for line in lines[start:] if line.strip()]


async def measure_profile(store: Store, redis_url: str, cfg: Config) -> Profile:
    """Profile `cfg.window` seconds after `cfg.warmup` on the saturated watches in `store`."""
    await release_leases(store)
    profiler = cProfile.Profile(time.process_time) if cfg.profile == "cpu" else cProfile.Profile()
    async with in_process_worker(cfg, redis_url, store.keys.namespace) as poller:
        await asyncio.sleep(cfg.warmup)
        polls0, t0 = poller.polls, time.monotonic()
        profiler.enable()
        await asyncio.sleep(cfg.window)
        profiler.disable()
        seconds = time.monotonic() - t0
        polls = poller.polls - polls0
    await release_leases(store)
    return Profile(seconds, polls / seconds, top(profiler, "cumulative"), top(profiler, "tottime"))
