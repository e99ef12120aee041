"""Benchmark: the fleet-wide host budget and circuit breaker (issue 11) — real processes on
loopback, two workers sharing one upstream host.

What runs, all on 127.0.0.1: a private `redis-server` (`--save "" --appendonly no`); the
upstream simulator as its own process (`vtwatch simulate --host-rate-limit L`: beyond L status
requests per second it answers 429 with `Retry-After`); a counting proxy in this process in
front of it, through which every watch polls, so it sees every request the fleet sends the host
(and can play a host that is down); and `--workers` `vtwatch worker` processes
(`VTW_HOST_RATE_LIMIT=--rate-limit`, the default burst). Watches are registered through
`Store.register` before the workers start; each phase has a fresh namespace and stops by itself
(every watch ended, or `--timeout` seconds).

1. **budget**: `--watches` watches of jobs whose durations are log-uniform in
   [`--min-duration`, `--max-duration`] s (a share `--error-share` ends `error`), policy 1 s /
   x1.5 / jitter 0.1 s / cap 10 s, deadline 600 s, no `max_attempts`: the fleet wants more than
   the budget at first, so the budget is what paces the host. Reported: the most requests at the
   host in one second (fixed windows from the first request, and any sliding window), the share
   of polls answered 429, each watch's final state against its job's outcome, and each watch's
   attempts against the requests the proxy saw for it (a poll put off is no attempt).
   Bars: no 1-s window above 1.1 x the rate limit (22 at 20/s), < 1 % answered 429, every
   watch in its expected state.
2. **breaker**: `--outage-watches` watches of `--outage-job` s jobs, policy 1 s / x1.5 / cap
   `--outage-interval` s, deadline 600 s, and a `max_attempts` that the policy's own schedule
   needs for the job plus half the polls it would make during the outage: a watch that kept
   polling a dead host on its schedule would run out. After `--outage-after` s the proxy
   answers 503 for `--outage` s; the breaker's state is read from Redis every 0.1 s, with
   `VTW_HOST_BREAKER_COOLDOWN` as given (`--cooldown`; by default the service's, 15 s).
   Reported: when the breaker opened and closed, the requests that reached the host while it
   was open (after 0.25 s for those already in flight) and the gaps between them, the most in
   any cool-down-long window, and each watch's final state and attempts. Bars: at most one
   request per cool-down while open, no watch ends short of attempts (`timeout` with "max_attempts
   reached", or held to its deadline for its last attempt), every watch in its expected state.
3. **tenants** (issue 17), with `VTW_HOST_RATE_LIMIT=--tenants-rate-limit` (10) and the
   default burst: tenant "flood" has `--flood-watches` (400) watches of jobs longer than the
   phase, each due every second (policy 1 s / x1 / jitter 0.1 s / cap 1 s): 40 times the budget.
   `--trickle-after` (5) s after the flood's first request at the host, tenant "trickle"
   registers `--trickle-watches` (10) watches of jobs that end `--trickle-job` (3) s later
   (policy 1 s / x1.5 / jitter 0.1 s / cap `--trickle-interval` (2) s, deadline 60 s); the phase
   ends when they have all ended (or `--timeout`). The proxy tells the tenants' requests apart
   by job. Reported: the flood's requests while alone; while both want the host (from the
   trickle's registration to its last watch's end) each tenant's requests, their share of the
   host's and of the budget (the trickle should get what its schedule asks, up to half); the
   most requests at the host in one second; each trickle watch's detection latency (its end
   minus its job's end). Bars: no 1-s window (sliding) above limit + burst + 2, every trickle
   watch `completed` within 8 s of its job's end.

Run from the repository root (about 3.5 minutes with the defaults):

    .venv/bin/python bench/hosts.py                  # the table (or: python -m bench.hosts)
    .venv/bin/python bench/hosts.py --json           # the same as JSON
    .venv/bin/python bench/hosts.py --only breaker --outage 6 --cooldown 2
    .venv/bin/python bench/hosts.py --only tenants   # or several: --only budget,tenants
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: let `worker` be the package, not this file
    ROOT = Path(__file__).resolve().parent.parent
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import argparse
import asyncio
import contextlib
import json
import math
import random
import secrets
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any, cast
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from bench._config import log, positive_int
from bench._fixtures import LOOPBACK, TENANT, Simulator, delete_namespace, settings_env, spec_for
from bench._procs import Proc, start_redis, start_simulator, vtwatch, wait_http, wait_redis
from bench._proxy import CountingProxy, busiest_window, per_second
from client.workload import DurationMix
from service.api.schemas import Policy
from service.domain import WatchDoc
from service.store.hosts import HostBook
from service.store.watches import Store
from worker.spec import normalized_host

DEADLINE_SECONDS = 600.0
IN_FLIGHT_MARGIN = 0.25  # requests admitted before the breaker opened may arrive this late
WATCH_EVERY = 0.1  # seconds between reads of the host's state (breaker phase)
TERMINAL = ("completed", "error", "timeout", "cancelled")
PHASES = ("budget", "breaker", "tenants")
FLOOD, TRICKLE = "flood", "trickle"  # the tenants phase's tenants
FLOOD_JOB_SECONDS = 3600.0  # longer than the phase: the flood never lets up
TRICKLE_DEADLINE_SECONDS = 60.0
LATENCY_BAR = 8.0  # s from a trickle job's end to its watch's end, at most


@dataclass(frozen=True, slots=True)
class HostsConfig:
    only: str | None = None  # "budget", "breaker" or "tenants", or several joined by ","; None: all
    workers: int = 2
    rate_limit: float = 20.0  # VTW_HOST_RATE_LIMIT
    simulator_limit: float = 30.0  # the simulator's own limit (429 beyond)
    seed: int = 0
    timeout: float = 240.0  # per phase
    # budget phase
    watches: int = 300
    min_duration: float = 2.0
    max_duration: float = 60.0
    error_share: float = 0.25
    max_interval: float = 10.0
    # breaker phase
    outage_watches: int = 40
    outage_job: float = 40.0
    outage_interval: float = 2.0
    outage_after: float = 8.0
    outage: float = 20.0
    cooldown: float | None = None  # VTW_HOST_BREAKER_COOLDOWN; None: the service's default
    outage_rate_limit: float | None = None  # VTW_HOST_RATE_LIMIT of this phase; None: the same
    # tenants phase
    tenants_rate_limit: float = 10.0  # VTW_HOST_RATE_LIMIT of this phase
    flood_watches: int = 400
    trickle_watches: int = 10
    trickle_after: float = 5.0  # s after the flood's first request at the host
    trickle_job: float = 3.0
    trickle_interval: float = 2.0  # the trickle's policy cap

    @property
    def phases(self) -> tuple[str, ...]:
        return PHASES if self.only is None else tuple(self.only.split(","))

    @property
    def effective_cooldown(self) -> float:
        if self.cooldown is not None:
            return self.cooldown
        from service.settings import Settings

        return float(Settings.model_fields["host_breaker_cooldown"].default)


@dataclass(slots=True)
class Watches:
    """How the watches ended."""

    total: int
    by_state: dict[str, int]
    wrong_state: int  # not the state their job ended in
    examples: list[str]  # a few wrong ones
    attempts_max: int
    attempts_mismatched: int  # attempts != requests the proxy saw for the watch's job
    out_of_attempts: int  # ended "max_attempts reached", or held to the deadline for the last
    seconds: float  # from the workers' start to the last watch's end


@dataclass(slots=True)
class BudgetResult:
    watches: Watches
    requests: int
    rate: float  # requests/s over the run
    busiest_fixed: int
    busiest_sliding: int
    answered: dict[str, int]
    share_429: float
    per_second: list[int]
    budget_end: float | None
    bar_window: float
    met: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class BreakerResult:
    watches: Watches
    cooldown: float
    rate_limit: float
    max_attempts: int
    naive_attempts: int  # what a watch would spend on its own schedule, outage included
    outage_seconds: float
    opened_after: float | None  # seconds from the outage's start to the breaker's opening
    closed_after: float | None  # from the outage's start to the breaker's closing
    trips: int
    during_outage: int  # requests at the host while it answered 503
    before_open: int  # ...of which arrived before the breaker opened (+ the in-flight margin)
    while_open: list[float]  # arrivals while open (s from the opening), after the margin
    gaps: list[float]
    most_per_cooldown: int  # in any cool-down-long window while open
    allowed: int  # one per cool-down begun while open
    outage_requests_per_watch_max: int
    met: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class Share:
    """One tenant's requests at the host within a window."""

    requests: int
    rate: float  # requests/s
    of_host: float  # share of the host's requests in the window
    of_budget: float  # rate / VTW_HOST_RATE_LIMIT


@dataclass(slots=True)
class TenantsResult:
    watches: Watches  # the trickle's
    rate_limit: float
    burst: float
    flood_watches: int
    flood_pending: int  # of the flood's watches still pending at the end (all, its jobs last)
    alone_seconds: float  # the flood's first request to the trickle's first registration
    alone: Share  # the flood's, alone
    together_seconds: float  # the trickle's first registration to its last watch's end
    flood: Share
    trickle: Share
    trickle_asked: int  # the polls the trickle's schedules make until their jobs end
    requests: int
    busiest_fixed: int
    busiest_sliding: int
    bar_window: float  # limit + burst + 2
    answered: dict[str, int]
    latencies: list[float]  # per trickle watch: its end - its job's end, s, sorted
    latency_p50: float | None
    latency_max: float | None
    flood_per_second: list[int]  # from the first request at the host
    trickle_per_second: list[int]  # ...on the same clock
    met: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    redis: str
    budget: BudgetResult | None = None
    breaker: BreakerResult | None = None
    tenants: TenantsResult | None = None


# --- the fleet -------------------------------------------------------------------------------


@dataclass
class Fleet:
    """One phase's processes and namespace: the workers, the proxy and the store."""

    cfg: HostsConfig
    redis_url: str
    store: Store
    sim: Simulator
    proxy: CountingProxy
    proxy_url: str
    folder: Path
    rate_limit: float
    workers: list[Proc] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        settings: dict[str, Any] = {
            "redis_url": self.redis_url,
            "namespace": self.store.keys.namespace,
            "allowed_networks": LOOPBACK,
            "metrics_port": 0,  # several workers on one machine
            "host_rate_limit": self.rate_limit,
        }
        if self.cfg.cooldown is not None:
            settings["host_breaker_cooldown"] = self.cfg.cooldown
        return settings_env(settings)

    def start_workers(self, phase: str) -> None:
        env = self.env()
        for n in range(1, self.cfg.workers + 1):
            argv = vtwatch("--log-level", "warning", "worker")
            log_file = self.folder / f"{phase}-worker-{n}.log"
            self.workers.append(Proc(f"worker {n}", argv, log_file, env))

    def check_alive(self) -> None:
        for proc in self.workers:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")

    async def stop(self) -> None:
        for proc in self.workers:
            await proc.stop(grace=20)

    @property
    def host(self) -> str:
        return normalized_host(self.proxy_url)

    @property
    def port(self) -> int:
        """The proxy's port: a breaker is per host and port."""
        return int(urlsplit(self.proxy_url).port or 80)

    async def register(
        self,
        jobs: list[dict[str, Any]],
        policy: Policy,
        tenant: str = TENANT,
        deadline: float = DEADLINE_SECONDS,
    ) -> dict[str, tuple[str, str]]:
        """One watch of `tenant` per simulator job, through the proxy; returns id -> (job id,
        outcome)."""
        created = await self.sim_jobs(jobs)
        planned = {}
        for job in created:
            url = f"{self.proxy_url}/jobs/{job['id']}/status"
            spec = spec_for(url, policy, {"job": job["id"], "expected": job["outcome"]})
            doc, _ = await self.store.register(tenant, spec, deadline)
            planned[doc["id"]] = (job["id"], job["outcome"])
        return planned

    async def sim_jobs(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async with self.sim.session.post(f"{self.sim.base}/jobs", json={"jobs": jobs}) as answer:
            answer.raise_for_status()
            return cast(list[dict[str, Any]], (await answer.json())["jobs"])

    async def wait_done(
        self,
        total: int,
        timeout: float,
        tick: Callable[[], Awaitable[None]] | None = None,
        tenant: str = TENANT,
        strict: bool = True,
    ) -> float:
        """Until none of `tenant`'s watches is pending (or `timeout`: raises if `strict`);
        returns when the last one ended (or the wait did)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if tick is not None:
                await tick()
            counts = await self.store.counts(tenant)
            if counts.get("pending", 0) == 0 and sum(counts.get(s, 0) for s in TERMINAL) >= total:
                return time.monotonic()
            if time.monotonic() > deadline:
                if not strict:
                    return time.monotonic()
                raise RuntimeError(f"watches still pending after {timeout:g} s: {counts}")
            await asyncio.sleep(0.25 if tick is None else WATCH_EVERY)

    async def docs(self, ids: Sequence[str], tenant: str = TENANT) -> list[WatchDoc]:
        return await self.store.get_many(tenant, list(ids))


def judge(
    docs: list[WatchDoc],
    planned: dict[str, tuple[str, str]],
    requests_per_job: Counter[str],
    seconds: float,
    max_attempts: int | None = None,
) -> Watches:
    by_state = Counter(d["state"] for d in docs)
    wrong = [d for d in docs if d["state"] != planned[d["id"]][1]]
    wrong_count = len(wrong) + len(planned) - len(docs)
    mismatched = sum(1 for d in docs if d["attempts"] != requests_per_job[planned[d["id"]][0]])
    short = 0
    for d in docs:
        held = d["finished_at"] is not None and d["finished_at"] >= d["deadline"] - 1000
        ran_out = d["reason"] == "max_attempts reached"
        at_last = max_attempts is not None and d["attempts"] >= max_attempts
        short += ran_out or held or (at_last and d["state"] == "timeout")
    examples = [
        f"{d['id']}: {d['state']} ({d['reason']}), expected {planned[d['id']][1]}, "
        f"{d['attempts']} attempts, last error {d['last_error']}"
        for d in wrong[:5]
    ]
    return Watches(
        len(docs),
        dict(by_state),
        wrong_count,
        examples,
        max((d["attempts"] for d in docs), default=0),
        mismatched,
        short,
        seconds,
    )


# --- phase 1: the budget ---------------------------------------------------------------------


def budget_policy(cfg: HostsConfig) -> Policy:
    return Policy(
        initial_wait_time=1.0,
        backoff_factor=1.5,
        jitter=0.1,
        max_interval=cfg.max_interval,
        max_wait_time=DEADLINE_SECONDS,
    )


async def run_budget(fleet: Fleet) -> BudgetResult:
    cfg = fleet.cfg
    rng = random.Random(cfg.seed)
    mix = DurationMix("loguniform", low=cfg.min_duration, high=cfg.max_duration)
    jobs = [
        {
            "duration": round(mix.sample(rng), 2),
            "outcome": "error" if rng.random() < cfg.error_share else "completed",
        }
        for _ in range(cfg.watches)
    ]
    planned = await fleet.register(jobs, budget_policy(cfg))
    log(f"budget: {len(planned)} watches registered; starting {cfg.workers} workers")
    began = time.monotonic()
    fleet.start_workers("budget")
    ended = await fleet.wait_done(len(planned), cfg.timeout)
    docs = await fleet.docs(list(planned))
    state = await HostBook(fleet.store.redis, fleet.store.keys).read(fleet.host, fleet.port)
    await fleet.stop()

    proxy = fleet.proxy
    times = proxy.times()
    fixed, sliding = busiest_window(times)
    answered = proxy.answered()
    share_429 = answered[429] / max(1, len(times))
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    watches = judge(docs, planned, proxy.per_job(), ended - began)
    bar = cfg.rate_limit * 1.1
    result = BudgetResult(
        watches,
        len(times),
        len(times) / span if span else 0.0,
        fixed,
        sliding,
        {str(code): n for code, n in sorted(answered.items())},
        share_429,
        per_second(times),
        None if state is None else state.budget,
        bar,
    )
    result.met = {
        "fixed 1-s window": fixed <= bar,
        "sliding 1-s window": sliding <= bar,
        "429 share < 1 %": share_429 < 0.01,
        "every watch in its expected state": watches.wrong_state == 0,
    }
    return result


# --- phase 2: the breaker --------------------------------------------------------------------


def breaker_policy(cfg: HostsConfig, max_attempts: int) -> Policy:
    return Policy(
        initial_wait_time=1.0,
        backoff_factor=1.5,
        jitter=0.1,
        max_interval=cfg.outage_interval,
        max_wait_time=DEADLINE_SECONDS,
        max_attempts=max_attempts,
    )


def schedule_polls(policy: Policy, until: float) -> int:
    """The polls a watch makes on its own schedule (no jitter) until one comes at or after
    `until` seconds: the first at once, then delays growing by the factor up to the cap."""
    t, delay, polls = 0.0, policy.initial_wait_time, 1
    while t < until:
        t += delay
        polls += 1
        delay = min(policy.max_interval, delay * policy.backoff_factor)
    return polls


def attempts_for(cfg: HostsConfig) -> tuple[int, int]:
    """(max_attempts, what a watch polling on its schedule through the outage would spend)."""
    shape = breaker_policy(cfg, 1)
    needed = schedule_polls(shape, cfg.outage_job)
    in_outage = math.floor(cfg.outage / cfg.outage_interval)
    return needed + max(1, in_outage // 2), needed + in_outage


@dataclass
class BreakerWatch:
    """The breaker that holds the bench tenant's polls of the host, as read from Redis every
    WATCH_EVERY seconds (this clock)."""

    fleet: Fleet
    after: float = math.inf  # only transitions from this time on count
    opened_at: float | None = None
    closed_at: float | None = None
    trips: int = 0
    _book: HostBook | None = None

    async def tick(self) -> None:
        if self._book is None:
            self._book = HostBook(self.fleet.store.redis, self.fleet.store.keys)
        # The breaker that holds the watches' polls: the tenant's own (the fleet's opens only
        # when a second tenant's does too; it is read first, should it be open).
        state = await self._book.read(self.fleet.host, self.fleet.port, TENANT)
        now = time.monotonic()
        if state is None or now < self.after:
            return
        self.trips = state.trips
        if self.opened_at is None and state.breaker != "closed":
            self.opened_at = now
        elif self.opened_at is not None and self.closed_at is None and state.breaker == "closed":
            self.closed_at = now


async def run_breaker(fleet: Fleet) -> BreakerResult:
    cfg = fleet.cfg
    cooldown = cfg.effective_cooldown
    max_attempts, naive = attempts_for(cfg)
    rng = random.Random(cfg.seed + 1)
    jobs = [
        {
            "duration": cfg.outage_job,
            "outcome": "error" if rng.random() < cfg.error_share else "completed",
        }
        for _ in range(cfg.outage_watches)
    ]
    planned = await fleet.register(jobs, breaker_policy(cfg, max_attempts))
    log(
        f"breaker: {len(planned)} watches of {cfg.outage_job:g} s jobs, max_attempts "
        f"{max_attempts} (on its schedule through the outage a watch would need {naive}); "
        f"cool-down {cooldown:g} s"
    )
    began = time.monotonic()
    fleet.start_workers("breaker")
    watcher = BreakerWatch(fleet)
    proxy = fleet.proxy
    while time.monotonic() - began < cfg.outage_after or len(proxy.per_job()) < len(planned):
        fleet.check_alive()
        if time.monotonic() - began > cfg.timeout:
            raise RuntimeError("not every watch was polled before the outage")
        await asyncio.sleep(WATCH_EVERY)
    proxy.failing = True
    outage_began = watcher.after = time.monotonic()
    log(f"breaker: the host answers 503 for {cfg.outage:g} s")
    while time.monotonic() - outage_began < cfg.outage:
        fleet.check_alive()
        await watcher.tick()
        await asyncio.sleep(WATCH_EVERY)
    proxy.failing = False
    outage_ended = time.monotonic()
    log("breaker: the host answers again")
    remaining = cfg.timeout - (outage_ended - began)
    ended = await fleet.wait_done(len(planned), remaining, watcher.tick)
    while watcher.opened_at is not None and watcher.closed_at is None:
        if time.monotonic() - outage_ended > max(30.0, 3 * cooldown):
            break  # every watch ended (say at its deadline) before the breaker closed
        await watcher.tick()
        await asyncio.sleep(WATCH_EVERY)
    docs = await fleet.docs(list(planned))
    await fleet.stop()

    during = proxy.times(outage_began, outage_ended)
    opened, closed = watcher.opened_at, watcher.closed_at
    while_open: list[float] = []
    before_open = len(during)
    if opened is not None:
        # Open until the probe that found the host well (its answer closes the breaker; the
        # requests right after it were granted once it was closed), or until seen closed.
        settled = opened + IN_FLIGHT_MARGIN
        until = closed if closed is not None else math.inf
        for arrival in proxy.arrivals:
            if settled <= arrival.at < until and arrival.status != 503:
                until = arrival.at + 1e-9
                break
        while_open = [t - opened for t in proxy.times(settled, until)]
        before_open = len(proxy.times(outage_began, settled))
    gaps = [round(b - a, 2) for a, b in pairwise(while_open)]
    most = most_in_one_cooldown(while_open, cooldown)
    open_for = (closed if closed is not None else time.monotonic()) - (opened or outage_began)
    allowed = math.ceil(open_for / cooldown)
    outage_per_job = proxy.per_job(outage_began, outage_ended)
    watches = judge(docs, planned, proxy.per_job(), ended - began, max_attempts)
    result = BreakerResult(
        watches,
        cooldown,
        fleet.rate_limit,
        max_attempts,
        naive,
        outage_ended - outage_began,
        None if opened is None else opened - outage_began,
        None if closed is None else closed - outage_began,
        watcher.trips,
        len(during),
        before_open,
        [round(t, 2) for t in while_open],
        gaps,
        most,
        allowed,
        max(outage_per_job.values(), default=0),
    )
    result.met = {
        "breaker opened": opened is not None,
        "at most one request per cool-down while open": most <= 1 and len(while_open) <= allowed,
        "no watch short of attempts": watches.out_of_attempts == 0,
        "every watch in its expected state": watches.wrong_state == 0,
    }
    return result


def most_in_one_cooldown(times: Sequence[float], cooldown: float) -> int:
    """The most requests within one cool-down, with 5 % slack for timing noise: a request
    exactly one cool-down after another is allowed."""
    return busiest_window(times, cooldown * 0.95)[1]


# --- phase 3: two tenants on one host -------------------------------------------------------


def flood_policy() -> Policy:
    """A poll every second, whatever the host's budget."""
    return Policy(
        initial_wait_time=1.0,
        backoff_factor=1.0,
        jitter=0.1,
        max_interval=1.0,
        max_wait_time=DEADLINE_SECONDS,
    )


def trickle_policy(cfg: HostsConfig) -> Policy:
    return Policy(
        initial_wait_time=1.0,
        backoff_factor=1.5,
        jitter=0.1,
        max_interval=cfg.trickle_interval,
        max_wait_time=TRICKLE_DEADLINE_SECONDS,
    )


def default_burst(rate_limit: float) -> float:
    """`VTW_HOST_BURST` when unset, as the workers compute it."""
    from service.settings import Settings

    return Settings.model_construct(host_rate_limit=rate_limit, host_burst=None).host_burst_size


def share(times: Sequence[float], total: int, seconds: float, rate_limit: float) -> Share:
    rate = len(times) / seconds if seconds > 0 else 0.0
    return Share(len(times), rate, len(times) / total if total else 0.0, rate / rate_limit)


def on_clock(times: Sequence[float], start: float) -> list[int]:
    """Requests in each second from `start`."""
    counts = Counter(int(t - start) for t in times)
    return [counts[i] for i in range(max(counts, default=-1) + 1)]


async def run_tenants(fleet: Fleet) -> TenantsResult:
    cfg = fleet.cfg
    jobs = [{"duration": FLOOD_JOB_SECONDS, "outcome": "completed"}] * cfg.flood_watches
    flood = await fleet.register(jobs, flood_policy(), FLOOD)
    log(
        f"tenants: {len(flood)} watches of {FLOOD}, due every second; starting {cfg.workers} "
        f"workers, VTW_HOST_RATE_LIMIT={fleet.rate_limit:g}"
    )
    began = time.monotonic()
    fleet.start_workers("tenants")
    proxy = fleet.proxy
    while not proxy.arrivals:
        fleet.check_alive()
        if time.monotonic() - began > cfg.timeout:
            raise RuntimeError(f"no request at the host after {cfg.timeout:g} s")
        await asyncio.sleep(WATCH_EVERY)
    first = proxy.arrivals[0].at
    while time.monotonic() - first < cfg.trickle_after:
        fleet.check_alive()
        await asyncio.sleep(WATCH_EVERY)

    # The jobs end `trickle_job` s after they are created, no earlier than `ends`: a latency
    # measured from it is at most a few ms too long.
    together = time.monotonic()
    ends = time.time() + cfg.trickle_job
    jobs = [{"duration": cfg.trickle_job, "outcome": "completed"}] * cfg.trickle_watches
    trickle = await fleet.register(jobs, trickle_policy(cfg), TRICKLE, TRICKLE_DEADLINE_SECONDS)
    log(f"tenants: {len(trickle)} watches of {TRICKLE}, jobs of {cfg.trickle_job:g} s")
    remaining = cfg.timeout - (together - began)
    waited = await fleet.wait_done(len(trickle), remaining, tenant=TRICKLE, strict=False)
    docs = await fleet.docs(list(trickle), TRICKLE)
    flood_counts = await fleet.store.counts(FLOOD)
    await fleet.stop()

    # Redis server time and this process's clocks read the same machine's clock.
    wall_to_monotonic = time.monotonic() - time.time()
    finished = [d["finished_at"] / 1000 for d in docs if d["finished_at"] is not None]
    done = len(finished) == len(trickle)
    until = max(finished) + wall_to_monotonic if done else waited
    latencies = sorted(round(t - ends, 2) for t in finished)

    trickle_jobs = {job for job, _ in trickle.values()}
    flood_times = [a.at for a in proxy.arrivals if a.job not in trickle_jobs]
    trickle_times = [a.at for a in proxy.arrivals if a.job in trickle_jobs]
    times = proxy.times()
    fixed, sliding = busiest_window(times)
    burst = default_burst(fleet.rate_limit)
    bar = fleet.rate_limit + burst + 2
    both = [t for t in times if together <= t < until]
    watches = judge(docs, trickle, proxy.per_job(), until - together)
    asked = cfg.trickle_watches * schedule_polls(trickle_policy(cfg), cfg.trickle_job)
    result = TenantsResult(
        watches,
        fleet.rate_limit,
        burst,
        len(flood),
        flood_counts.get("pending", 0),
        together - first,
        share(
            [t for t in flood_times if t < together],
            len(proxy.times(0, together)),
            together - first,
            fleet.rate_limit,
        ),
        until - together,
        share(
            [t for t in flood_times if together <= t < until],
            len(both),
            until - together,
            fleet.rate_limit,
        ),
        share(
            [t for t in trickle_times if together <= t < until],
            len(both),
            until - together,
            fleet.rate_limit,
        ),
        asked,
        len(times),
        fixed,
        sliding,
        bar,
        {str(code): n for code, n in sorted(proxy.answered().items())},
        latencies,
        statistics.median(latencies) if latencies else None,
        max(latencies, default=None) if done else None,
        on_clock(flood_times, first),
        on_clock(trickle_times, first),
    )
    result.met = {
        "busiest 1-s window": sliding <= bar,
        "trickle detected within the bar": done and max(latencies) <= LATENCY_BAR,
        "every trickle watch completed": watches.by_state == {"completed": len(trickle)},
    }
    return result


# --- the whole run ---------------------------------------------------------------------------


async def run_benchmark(cfg: HostsConfig) -> Report:
    with tempfile.TemporaryDirectory(prefix="vtw-bench-hosts-") as tmp:
        folder = Path(tmp)
        async with contextlib.AsyncExitStack() as cleanup:  # stops what started, in reverse
            redis_proc, redis_url = start_redis(folder)
            cleanup.push_async_callback(redis_proc.stop)
            await wait_redis(redis_proc, redis_url)
            redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
            cleanup.push_async_callback(redis.aclose)
            version = (await redis.info("server"))["redis_version"]
            report = Report(asdict(cfg), f"private redis-server ({redis_url}), Redis {version}")
            limit = ("--host-rate-limit", f"{cfg.simulator_limit:g}")
            sim_proc, sim_url = start_simulator(folder, "--seed", str(cfg.seed), *limit)
            cleanup.push_async_callback(sim_proc.stop)
            await wait_http(sim_proc, f"{sim_url}/stats")
            session = await cleanup.enter_async_context(aiohttp.ClientSession())
            sim = Simulator(sim_proc, sim_url, session)
            phases: list[tuple[str, Callable[[Fleet], Awaitable[Any]]]] = [
                ("budget", run_budget),
                ("breaker", run_breaker),
                ("tenants", run_tenants),
            ]
            for name, run in phases:
                if name not in cfg.phases:
                    continue
                budget = cfg.rate_limit
                if name == "breaker" and cfg.outage_rate_limit is not None:
                    budget = cfg.outage_rate_limit
                if name == "tenants":
                    budget = cfg.tenants_rate_limit
                result = await run_phase(cfg, redis, redis_url, sim, folder, run, budget)
                setattr(report, name, result)
    return report


async def run_phase(
    cfg: HostsConfig,
    redis: aioredis.Redis,
    redis_url: str,
    sim: Simulator,
    folder: Path,
    run: Callable[[Fleet], Awaitable[Any]],
    rate_limit: float,
) -> Any:
    """One phase with a fresh namespace and proxy; its workers are stopped whatever happens."""
    store = Store(redis, namespace=f"bench-hosts-{secrets.token_hex(4)}")
    proxy = CountingProxy(sim.base)
    proxy_url = await proxy.start()
    fleet = Fleet(cfg, redis_url, store, sim, proxy, proxy_url, folder, rate_limit)
    try:
        return await run(fleet)
    except BaseException:
        for proc in fleet.workers:
            log(f"{proc.name} log ends:\n{proc.tail()}")
        raise
    finally:
        await fleet.stop()
        await proxy.aclose()
        await delete_namespace(store)
        await redis.delete(store.keys.host(fleet.host), store.keys.breaker(fleet.host, fleet.port))


# --- output ----------------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def format_table(report: Report) -> str:
    cfg = HostsConfig(**report.config)
    limits = f"{cfg.rate_limit:g}" if report.budget or report.breaker else ""
    if report.tenants is not None:
        limits += f"{' (budget, breaker), ' if limits else ''}{cfg.tenants_rate_limit:g} (tenants)"
    lines = [
        f"Host budget benchmark: {cfg.workers} worker processes, VTW_HOST_RATE_LIMIT="
        f"{limits} (default burst), a simulator answering 429 beyond "
        f"{cfg.simulator_limit:g} req/s, every request counted at a proxy in front of it",
        f"Redis: {report.redis}",
    ]
    b = report.budget
    if b is not None:
        w = b.watches
        lines += [
            "",
            f"1. budget: {w.total} watches, jobs log-uniform {cfg.min_duration:g}-"
            f"{cfg.max_duration:g} s ({cfg.error_share:.0%} end error), all ended after "
            f"{w.seconds:.1f} s; {b.requests:,} requests at the host, {b.rate:.1f}/s",
            "",
            "| figure | value | bar | met? |",
            "|---|---|---|---|",
            f"| most requests in a 1-s window, fixed from the first request | {b.busiest_fixed} "
            f"| <= {b.bar_window:g} | {yes(b.met['fixed 1-s window'])} |",
            f"| most requests in any (sliding) 1-s window | {b.busiest_sliding} "
            f"| <= {b.bar_window:g} | {yes(b.met['sliding 1-s window'])} |",
            f"| polls answered 429 | {b.share_429:.2%} ({b.answered.get('429', 0)} of "
            f"{b.requests:,}) | < 1 % | {yes(b.met['429 share < 1 %'])} |",
            f"| watches in their expected state | {w.total - w.wrong_state} of {w.total} "
            f"({fmt_states(w.by_state)}) | all | "
            f"{yes(b.met['every watch in its expected state'])} |",
            f"| watches whose attempts != requests seen for them | {w.attempts_mismatched} | | |",
            "",
            f"requests per second: {b.per_second}",
            f"budget at the end: {fmt_num(b.budget_end)} req/s",
        ]
        lines += [f"  ! {e}" for e in w.examples]
    r = report.breaker
    if r is not None:
        w = r.watches
        lines += [
            "",
            f"2. breaker: {w.total} watches of {cfg.outage_job:g} s jobs, max_attempts "
            f"{r.max_attempts} (a watch polling on its schedule through the outage would need "
            f"{r.naive_attempts}); 503 for {r.outage_seconds:.1f} s; cool-down {r.cooldown:g} s; "
            f"VTW_HOST_RATE_LIMIT={r.rate_limit:g}; all ended after {w.seconds:.1f} s",
            "",
            "| figure | value | bar | met? |",
            "|---|---|---|---|",
            f"| breaker opened / closed, s after the outage began | {fmt_num(r.opened_after)} / "
            f"{fmt_num(r.closed_after)} ({r.trips} trips) | opens "
            f"| {yes(r.met['breaker opened'])} |",
            f"| requests during the outage | {r.during_outage} ({r.before_open} before it opened; "
            f"at most {r.outage_requests_per_watch_max} for one watch) | | |",
            f"| requests while open (s after opening) | {len(r.while_open)}: {r.while_open}, "
            f"gaps {r.gaps} | <= {r.allowed} (one per cool-down) | "
            f"{yes(r.met['at most one request per cool-down while open'])} |",
            f"| most requests in one cool-down while open | {r.most_per_cooldown} | <= 1 | |",
            f"| watches short of attempts (max_attempts reached / held to the deadline) "
            f"| {w.out_of_attempts} (most attempts: {w.attempts_max} of {r.max_attempts}) | 0 "
            f"| {yes(r.met['no watch short of attempts'])} |",
            f"| watches in their expected state | {w.total - w.wrong_state} of {w.total} "
            f"({fmt_states(w.by_state)}) | all | "
            f"{yes(r.met['every watch in its expected state'])} |",
        ]
        lines += [f"  ! {e}" for e in w.examples]
    if report.tenants is not None:
        lines += tenants_table(cfg, report.tenants)
    return "\n".join(lines)


def tenants_table(cfg: HostsConfig, t: TenantsResult) -> list[str]:
    w = t.watches
    lines = [
        "",
        f"3. tenants: VTW_HOST_RATE_LIMIT={t.rate_limit:g} (burst {t.burst:g}); {t.flood_watches} "
        f"watches of '{FLOOD}' due every second (jobs longer than the phase); "
        f"{t.alone_seconds:.1f} s after its first request, {w.total} watches of '{TRICKLE}' "
        f"(jobs of {cfg.trickle_job:g} s; policy 1 s x1.5 up to {cfg.trickle_interval:g} s), all "
        f"ended {w.seconds:.1f} s after their registration; {t.requests:,} requests at the host",
        "",
        "| figure | value | bar | met? |",
        "|---|---|---|---|",
        f"| {FLOOD} alone ({t.alone_seconds:.1f} s): requests | {fmt_share(t.alone)} | | |",
        f"| both want the host ({t.together_seconds:.1f} s, to the last {TRICKLE} watch's end): "
        f"{FLOOD}'s requests | {fmt_share(t.flood)} | | |",
        f"| ...{TRICKLE}'s requests (its schedules ask {t.trickle_asked} to its jobs' ends) "
        f"| {fmt_share(t.trickle)} | | |",
        f"| most requests at the host in a 1-s window, fixed / sliding | {t.busiest_fixed} / "
        f"{t.busiest_sliding} | <= {t.bar_window:g} (limit + burst + 2) "
        f"| {yes(t.met['busiest 1-s window'])} |",
        f"| polls answered 429 | {t.answered.get('429', 0)} of {t.requests:,} | | |",
        f"| {TRICKLE}'s detection latency (its watch's end - its job's end), p50 / max "
        f"| {fmt_num(t.latency_p50, 2)} / {fmt_num(t.latency_max, 2)} s | max <= {LATENCY_BAR:g} s "
        f"| {yes(t.met['trickle detected within the bar'])} |",
        f"| {TRICKLE}'s watches completed | {w.by_state.get('completed', 0)} of "
        f"{cfg.trickle_watches} ({fmt_states(w.by_state)}) | all "
        f"| {yes(t.met['every trickle watch completed'])} |",
        f"| {FLOOD}'s watches still pending at the end | {t.flood_pending} of {t.flood_watches} "
        "| | |",
        "",
        f"requests per second from the first, {FLOOD}: {t.flood_per_second}",
        f"requests per second from the first, {TRICKLE}: {t.trickle_per_second}",
        f"{TRICKLE}'s latencies, s: {t.latencies}",
    ]
    return lines + [f"  ! {e}" for e in w.examples]


def fmt_share(s: Share) -> str:
    return (
        f"{s.requests:,}: {s.rate:.1f}/s, {s.of_host:.0%} of the host's, "
        f"{s.of_budget:.0%} of the budget"
    )


def fmt_states(by_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))


def fmt_num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def phase_names(text: str) -> str:
    """An argparse type: phase names joined by commas ("budget,tenants")."""
    names = text.split(",")
    unknown = [name for name in names if name not in PHASES]
    if unknown:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}: {text}")
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = HostsConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--only", type=phase_names, help=f"phases to run, of {','.join(PHASES)} (default: all)")
    add("--workers", type=positive_int, default=d.workers, help="worker processes (%(default)s)")
    add("--rate-limit", type=float, default=d.rate_limit, help="VTW_HOST_RATE_LIMIT")
    add("--simulator-limit", type=float, default=d.simulator_limit, help="429 beyond, req/s")
    add("--seed", type=int, default=d.seed, help="job durations and outcomes (%(default)s)")
    add("--timeout", type=float, default=d.timeout, help="seconds per phase at most")
    add("--watches", type=positive_int, default=d.watches, help="budget phase (%(default)s)")
    add("--min-duration", type=float, default=d.min_duration, help="shortest job, s")
    add("--max-duration", type=float, default=d.max_duration, help="longest job, s")
    add("--error-share", type=float, default=d.error_share, help="jobs that end error")
    add("--max-interval", type=float, default=d.max_interval, help="budget phase policy cap, s")
    add("--outage-watches", type=positive_int, default=d.outage_watches, help="breaker phase")
    add("--outage-job", type=float, default=d.outage_job, help="breaker phase job length, s")
    add("--outage-interval", type=float, default=d.outage_interval, help="its policy cap, s")
    add("--outage-after", type=float, default=d.outage_after, help="s before the 503s begin")
    add("--outage", type=float, default=d.outage, help="seconds of 503 (%(default)s)")
    add("--cooldown", type=float, default=None, help="VTW_HOST_BREAKER_COOLDOWN (service default)")
    add("--outage-rate-limit", type=float, default=None, help="breaker phase's; default the same")
    add("--tenants-rate-limit", type=float, default=d.tenants_rate_limit, help="tenants phase's")
    add("--flood-watches", type=positive_int, default=d.flood_watches, help="tenants phase")
    add("--trickle-watches", type=positive_int, default=d.trickle_watches, help="tenants phase")
    add("--trickle-after", type=float, default=d.trickle_after, help="s after the flood's start")
    add("--trickle-job", type=float, default=d.trickle_job, help="trickle's job length, s")
    add("--trickle-interval", type=float, default=d.trickle_interval, help="its policy cap, s")
    add("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = HostsConfig(**{f.name: getattr(args, f.name) for f in fields(HostsConfig)})
    report = asyncio.run(run_benchmark(cfg))
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    met = [*(report.budget.met.values() if report.budget else ())]
    met += [*(report.breaker.met.values() if report.breaker else ())]
    met += [*(report.tenants.met.values() if report.tenants else ())]
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
