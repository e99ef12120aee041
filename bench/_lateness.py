"""Poll lateness (`Poller.lateness_ms`: claim time minus the watch's `next_poll_at`) with the
worker in this process, on staggered watches polled every period at about half its capacity;
and the skew between a watch's schedule score and the `next_poll_at` in its doc."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench._config import Config
from bench._fixtures import delete_namespace, in_process_worker, register_all, spec_for
from bench._redis_stats import claims, command_stats, difference, script_runs
from service.api.schemas import Policy
from service.store.watches import Store

LATENESS_SAMPLES_MAX = 100_000  # the newest samples kept (a window of ~10 s at ~5k polls/s)
# The schedule with every doc, read in one atomic step while the worker runs.
SNAPSHOT_LUA = """
local t = redis.call('TIME')
local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local scored = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #scored, 2 do
  out[#out + 1] = scored[i + 1]
  out[#out + 1] = redis.call('GET', ARGV[1] .. scored[i]) or ''
end
return out
"""


@dataclass(slots=True)
class Lateness:
    watches: int
    period: float
    target_polls_per_s: float
    achieved_polls_per_s: float
    samples: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    # The schedule's due time minus the doc's `next_poll_at`, per watch at the end of the window:
    # the doc's time is the worker's estimate before `record`, the schedule's is Redis TIME in it.
    skew_p50_ms: float | None
    skew_p99_ms: float | None
    claims_per_poll: float  # claim.lua runs (poller and dispatcher) per poll
    scripts_per_poll: float  # EVALSHA/EVAL per poll
    cpu_us_per_poll: float  # this process's CPU time per poll (the worker runs in it)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def measure_lateness(
    redis: aioredis.Redis, redis_url: str, urls: Sequence[str], cfg: Config, capacity: float
) -> Lateness:
    store = Store(redis, namespace=f"bench-late-{secrets.token_hex(4)}")
    target = capacity / 2
    count = max(1, round(target * cfg.lateness_period))
    period = cfg.lateness_period
    policy = Policy(initial_wait_time=period, backoff_factor=1, jitter=0, max_interval=period)
    try:
        async with in_process_worker(cfg, redis_url, store.keys.namespace) as poller:
            # Register at the target rate so the watches are spread evenly over one period.
            started, done, tick = time.monotonic(), 0, 0.01
            while done < count:
                due = min(count, math.ceil((time.monotonic() - started) / period * count) + 1)
                specs = [spec_for(urls[i % len(urls)], policy) for i in range(done, due)]
                done += await register_all(store, specs)
                await asyncio.sleep(tick)
            await asyncio.sleep(max(cfg.warmup, period))
            seen: deque[int] = deque(maxlen=LATENESS_SAMPLES_MAX)
            poller.lateness_ms = seen  # sampled from here on (off in production)
            polls0, t0, cpu0 = poller.polls, time.monotonic(), time.process_time()
            stats0 = await command_stats(redis)
            await asyncio.sleep(cfg.lateness_window)
            samples = list(seen)
            polls = poller.polls - polls0
            achieved = polls / (time.monotonic() - t0)
            cpu_us = (time.process_time() - cpu0) / max(1, polls) * 1e6
            calls, _ = difference(stats0, await command_stats(redis))
            skews = await schedule_skew(store, period)
    finally:
        await delete_namespace(store)
    return Lateness(
        count,
        period,
        target,
        achieved,
        len(samples),
        percentile(samples, 50),
        percentile(samples, 99),
        max(samples) if samples else None,
        percentile(skews, 50),
        percentile(skews, 99),
        claims(calls) / max(1, polls),
        script_runs(calls) / max(1, polls),
        cpu_us,
    )


async def schedule_skew(store: Store, period: float) -> list[float]:
    """Per watch not leased right now: its schedule score minus its doc's `next_poll_at` (ms),
    read in one atomic step while the worker runs."""
    k = store.keys.parts[0]
    reply = await store.redis.eval(SNAPSHOT_LUA, 1, k.schedule, k.watch(""))
    now, rest = int(reply[0]), reply[1:]
    skews = []
    for score, raw in zip(rest[::2], rest[1::2], strict=True):
        doc = json.loads(raw) if raw else None
        leased = float(score) > now + 2 * period * 1000
        if doc and not leased and doc["attempts"] and doc["next_poll_at"] is not None:
            skews.append(float(score) - doc["next_poll_at"])
    return skews
