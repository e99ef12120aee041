"""Benchmark: the worker's poll throughput against a bare aiohttp loop, its Redis cost, lateness
and memory — real processes on loopback.

What runs, all on 127.0.0.1:

* a private `redis-server` on a free port (`--save "" --appendonly no`), so nothing else pollutes
  `INFO commandstats` (`--shared-redis` uses `--redis-url` instead, with a random namespace that
  is deleted afterwards);
* the upstream simulator as its own process (`vtwatch simulate --port <free>`), with one job per
  watch that stays `pending` for a day;
* per repeat, interleaved:
  1. **bare loop**: a separate Python process with one `aiohttp.ClientSession` (connector limit C)
     and C coroutines doing `GET <job status URL>` + `read()` for `--requests` requests; req/s is
     counted after the first 10 % (connection warm-up);
  2. **worker**: `vtwatch worker` as its own process (`VTW_WORKER_CONCURRENCY=C`,
     `VTW_PER_HOST_CONCURRENCY`, `VTW_ALLOWED_NETWORKS=127.0.0.0/8,::1/128`) on `--watches`
     pending watches registered through `Store.register`, policy 0.05 s / factor 1 / no jitter /
     cap 0.05 s, so every watch is due again at once (saturation). polls/s = the simulator's
     `/stats` request counter over `--window` seconds after `--warmup` seconds.
  The headline is median(worker polls/s) / median(bare req/s) (target >= 0.6).
* **Redis commands per poll** over each worker window (`INFO commandstats` before/after). Redis
  counts the commands a Lua script runs as well as the EVALSHA that ran it, so the table splits
  them: *top-level* = EVALSHA/EVAL plus every command no script uses (what the worker sends);
  *inside scripts* = the commands `service/lua/*.lua` call (TIME and ZRANGEBYSCORE are also sent
  directly by the retention sweep, once a minute, so at most one each per window);
* **poll lateness** (`Poller.lateness_ms`: claim time minus the watch's `next_poll_at`) p50/p99
  with the worker *in this process* (the simulator still apart), on K staggered watches polled
  every `--lateness-period` s, K chosen for ~half the measured worker capacity; beside it, the
  gap between a watch's real due time (its schedule score, Redis TIME inside `record`) and the
  `next_poll_at` in its doc, read atomically at the end of the window;
* **Redis memory per pending watch**: `used_memory` before/after registering
  `--memory-watches` watches (default policy, metadata `{"video": "abc.mp4"}`) in a fresh
  namespace, then deleted; with `MEMORY USAGE` of one doc and of each ZSET per member;
* with `--profile [wall|cpu]`, a saturated in-process worker run under cProfile (top 15 by
  cumulative and by own time). The wall clock (default) is distorted when other processes take
  the CPU; the CPU clock is exact but slows the worker several times over.

CPU, per wall second (1.0 = one core busy): the measured process and the simulator from
/proc/<pid>/stat, Redis from `INFO cpu`, "other" = the machine's busy time (/proc/stat) minus
those. Throughput on a shared machine moves with "other"; CPU time per request / per poll moves
much less, so the table also gives both and their ratio.

Run from the repository root (about 2 minutes with the defaults, +15 s with --profile):

    .venv/bin/python bench/worker.py                  # the table (or: python -m bench.worker)
    .venv/bin/python bench/worker.py --json           # the same as JSON
    .venv/bin/python bench/worker.py --repeats 1 --watches 5000 --memory-watches 0 --profile cpu
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
import cProfile
import io
import json
import math
import pstats
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis

from bench._procs import (
    Proc,
    child_env,
    cpu_seconds,
    free_port,
    machine_busy,
    start_redis,
    wait_http,
    wait_redis,
)
from service.models import Policy, WatchCreate
from service.settings import Settings
from service.store import Store
from worker.cli import run_async
from worker.process import tune_gc

TENANT = "bench"
LOOPBACK = "127.0.0.0/8,::1/128"
JOB_SECONDS = 86_400.0  # simulator jobs stay pending for the whole run
DEADLINE_SECONDS = 86_400.0
MEMORY_URL = "http://127.0.0.1:5000/jobs/j{}/status"
MEMORY_METADATA = {"video": "abc.mp4"}
REGISTER_PARALLEL = 64
BARE_WARMUP_SHARE = 0.1
SCRIPT_CALL = re.compile(r"redis\.call\(\s*'([A-Za-z]+)'")
TOP_LEVEL_SCRIPTS = frozenset({"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall"})
OWN_COMMANDS = frozenset({"info"})  # what this benchmark sends during a window
THIS_FILE = Path(__file__).resolve()


@dataclass(frozen=True, slots=True)
class Config:
    watches: int = 20_000
    concurrency: int = 256
    per_host_concurrency: int | None = None  # None: the same as concurrency
    requests: int = 20_000
    repeats: int = 3
    warmup: float = 2.0
    window: float = 10.0
    lateness_period: float = 1.0
    lateness_window: float = 10.0
    memory_watches: int = 100_000
    profile: str | None = None  # "wall" or "cpu": the profiler's clock
    shared_redis: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"

    @property
    def host_limit(self) -> int:
        return self.per_host_concurrency or self.concurrency


@dataclass(slots=True)
class Cpu:
    """Cores used over a measured part (1.0 = one core busy); `other` = the rest of the machine."""

    measured: float | None  # the bare client or the worker
    simulator: float | None
    redis: float | None
    other: float | None

    def __str__(self) -> str:
        parts = (self.measured, self.simulator, self.redis, self.other)
        return "/".join("-" if v is None else f"{v:.2f}" for v in parts)


@dataclass(slots=True)
class BareRun:
    requests: int
    seconds: float
    req_per_s: float
    errors: int
    cpu: Cpu
    cpu_us_per_request: float | None  # the client's CPU time per request


@dataclass(slots=True)
class WorkerRun:
    seconds: float
    polls: int
    polls_per_s: float
    non_200: int
    cpu: Cpu
    cpu_us_per_poll: float | None  # the worker's CPU time per poll
    commands: dict[str, int]
    usec: dict[str, int]
    leases_left: int
    log_problems: int


@dataclass(slots=True)
class CommandsPerPoll:
    top_level: dict[str, float]
    inside_scripts: dict[str, float]
    top_level_total: float
    all_total: float
    redis_usec_per_poll: float
    claims_per_poll: float
    watches_per_claim: float


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


@dataclass(slots=True)
class Memory:
    watches: int
    used_before: int
    used_after: int
    bytes_per_watch: float
    key_bytes: dict[str, float]  # MEMORY USAGE: one doc, and the ZSETs per member


@dataclass(slots=True)
class Profile:
    seconds: float
    polls_per_s: float
    by_cumulative: list[str]
    by_own_time: list[str]


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    redis: str
    bare: list[BareRun] = field(default_factory=list)
    worker: list[WorkerRun] = field(default_factory=list)
    bare_median: float = 0.0
    worker_median: float = 0.0
    ratio: float = 0.0
    bare_cpu_us_median: float | None = None
    worker_cpu_us_median: float | None = None
    cpu_cost_ratio: float | None = None
    commands: CommandsPerPoll | None = None
    lateness: Lateness | None = None
    memory: Memory | None = None
    profile: Profile | None = None


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def script_commands() -> frozenset[str]:
    """The Redis commands the store's Lua scripts call."""
    folder = resources.files("service") / "lua"
    names: set[str] = set()
    for item in folder.iterdir():
        if item.name.endswith(".lua"):
            names.update(m.lower() for m in SCRIPT_CALL.findall(item.read_text()))
    return frozenset(names)


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


async def delete_namespace(redis: aioredis.Redis, namespace: str) -> int:
    deleted = 0
    batch: list[str] = []
    async for key in redis.scan_iter(match=f"vtw:{{{namespace}}}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


async def release_leases(store: Store) -> int:
    """Make leased watches due now (a lease left by a stopped worker); returns how many."""
    now = await store.server_time_ms()
    schedule = store.keys.schedule
    leased = cast(list[str], await store.redis.zrangebyscore(schedule, now + 1000, "+inf"))
    if leased:
        await store.redis.zadd(schedule, dict.fromkeys(leased, now))
    return len(leased)


# --- the simulator ---------------------------------------------------------------------------


class Simulator:
    def __init__(self, proc: Proc, base: str, session: aiohttp.ClientSession) -> None:
        self.proc, self.base, self.session = proc, base, session

    async def stats(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/stats") as response:
            return cast(dict[str, Any], await response.json())

    async def create_jobs(self, count: int, chunk: int = 5000) -> list[str]:
        urls: list[str] = []
        while len(urls) < count:
            body = {"jobs": [{"duration": JOB_SECONDS}] * min(chunk, count - len(urls))}
            async with self.session.post(f"{self.base}/jobs", json=body) as response:
                response.raise_for_status()
                urls += [job["status_url"] for job in (await response.json())["jobs"]]
        return urls


def ok_count(stats: dict[str, Any]) -> int:
    return int(stats["by_status"].get("200", 0))


# --- 1. the bare loop (a child process) ------------------------------------------------------


class CpuMarks:
    """CPU counters of the processes we watch, at one moment."""

    def __init__(self, own: float | None, sim_pid: int, redis: float | None = None) -> None:
        self.at = time.monotonic()
        self.own, self.sim, self.redis = own, cpu_seconds(sim_pid), redis
        self.machine = machine_busy()

    def until(self, b: CpuMarks) -> Cpu:
        seconds = b.at - self.at

        def rate(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else (y - x) / seconds

        own, sim, redis = rate(self.own, b.own), rate(self.sim, b.sim), rate(self.redis, b.redis)
        machine = rate(self.machine, b.machine)
        other = (
            None if machine is None else max(0.0, machine - (own or 0) - (sim or 0) - (redis or 0))
        )
        return Cpu(own, sim, redis, other)


async def bare_loop(
    urls: Sequence[str], concurrency: int, total: int, sim_pid: int
) -> dict[str, Any]:
    """`total` GETs with `concurrency` coroutines on one session; rate after the warm-up."""
    warmup = int(total * BARE_WARMUP_SHARE)
    issued = done = errors = 0
    marks: list[CpuMarks] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run() -> None:
            nonlocal issued, done, errors
            while issued < total:
                url = urls[issued % len(urls)]
                issued += 1
                try:
                    async with session.get(url) as response:
                        await response.read()
                        errors += response.status != 200
                except aiohttp.ClientError:
                    errors += 1
                done += 1
                if done == warmup:
                    marks.append(CpuMarks(time.process_time(), sim_pid))

        await asyncio.gather(*(run() for _ in range(concurrency)))
        end = CpuMarks(time.process_time(), sim_pid)
    return {
        "requests": total - warmup,
        "seconds": end.at - marks[0].at,
        "errors": errors,
        "cpu": asdict(marks[0].until(end)),
    }


def bare_child_main(urls_file: str, concurrency: int, total: int, sim_pid: int) -> None:
    urls = Path(urls_file).read_text().split()
    result: dict[str, Any] = {}

    async def measure() -> None:
        result.update(await bare_loop(urls, concurrency, total, sim_pid))

    tune_gc()  # like for like: the worker's garbage-collector settings ...
    run_async(measure())  # ... and its event loop (uvloop if installed)
    print(json.dumps(result), flush=True)


async def run_bare(sim: Simulator, urls_file: Path, cfg: Config, folder: Path) -> BareRun:
    argv = [sys.executable, str(THIS_FILE), "--child-bare", str(urls_file)]
    argv += ["--concurrency", str(cfg.concurrency), "--requests", str(cfg.requests)]
    argv += ["--sim-pid", str(sim.proc.pid)]
    proc = Proc("bare loop", argv, folder / "bare.log")
    code = await proc.wait(timeout=300)
    if code != 0:
        await proc.stop()
        raise RuntimeError(f"bare loop failed ({code}):\n{proc.tail()}")
    out = json.loads(proc.log.read_text().strip().splitlines()[-1])
    rate = out["requests"] / out["seconds"]
    cpu = Cpu(**out["cpu"])
    per_request = None if cpu.measured is None else cpu.measured / rate * 1e6
    return BareRun(out["requests"], out["seconds"], rate, out["errors"], cpu, per_request)


# --- 2/3. the worker process -----------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    ok: int
    non_200: int
    commands: dict[str, tuple[int, int]]
    cpu: CpuMarks


async def snapshot(sim: Simulator, redis: aioredis.Redis, worker_pid: int) -> Snapshot:
    stats = await sim.stats()
    info = await redis.info("commandstats")
    cpu = await redis.info("cpu")
    commands = {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()
    }
    redis_cpu = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
    return Snapshot(
        ok_count(stats),
        int(stats["requests"]) - ok_count(stats),
        commands,
        CpuMarks(cpu_seconds(worker_pid), sim.proc.pid, redis_cpu),
    )


async def wait_first_polls(sim: Simulator, proc: Proc | None, timeout: float = 30.0) -> None:
    before = (await sim.stats())["requests"]
    deadline = time.monotonic() + timeout
    while (await sim.stats())["requests"] == before:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"worker exited early:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the worker made no request to the simulator (SSRF guard?)")
        await asyncio.sleep(0.05)


def worker_settings(cfg: Config, redis_url: str, namespace: str) -> dict[str, str]:
    return {
        "VTW_REDIS_URL": redis_url,
        "VTW_NAMESPACE": namespace,
        "VTW_ALLOWED_NETWORKS": LOOPBACK,
        "VTW_WORKER_CONCURRENCY": str(cfg.concurrency),
        "VTW_PER_HOST_CONCURRENCY": str(cfg.host_limit),
    }


async def run_worker(
    sim: Simulator, store: Store, redis_url: str, cfg: Config, folder: Path, index: int
) -> WorkerRun:
    env = child_env(worker_settings(cfg, redis_url, store.keys.namespace))
    argv = [str(Path(sys.executable).with_name("vtwatch")), "--log-level", "warning", "worker"]
    proc = Proc("worker", argv, folder / f"worker-{index}.log", env)
    try:
        await wait_first_polls(sim, proc)
        await asyncio.sleep(cfg.warmup)
        a = await snapshot(sim, store.redis, proc.pid)
        await asyncio.sleep(cfg.window)
        b = await snapshot(sim, store.redis, proc.pid)
    finally:
        code = await proc.stop(grace=30)
    if code not in (0, -15):
        log(f"worker exited with {code}:\n{proc.tail()}")
    seconds = b.cpu.at - a.cpu.at
    polls = b.ok - a.ok
    cpu = a.cpu.until(b.cpu)
    calls, usec = {}, {}
    for name, (n, us) in b.commands.items():
        n0, us0 = a.commands.get(name, (0, 0))
        if n > n0 and name not in OWN_COMMANDS:
            calls[name], usec[name] = n - n0, us - us0
    problems = sum(
        1
        for line in proc.log.read_text(errors="replace").splitlines()
        if "WARNING" in line or "ERROR" in line
    )
    return WorkerRun(
        seconds,
        polls,
        polls / seconds,
        b.non_200 - a.non_200,
        cpu,
        None if cpu.measured is None or not polls else cpu.measured * seconds / polls * 1e6,
        calls,
        usec,
        await release_leases(store),
        problems,
    )


def per_poll(run: WorkerRun, in_scripts: frozenset[str]) -> CommandsPerPoll:
    polls = max(1, run.polls)
    top = {
        n: c / polls
        for n, c in run.commands.items()
        if n in TOP_LEVEL_SCRIPTS or n not in in_scripts
    }
    inner = {n: c / polls for n, c in run.commands.items() if n not in top}
    top_usec = sum(us for n, us in run.usec.items() if n in top)
    claims = run.commands.get("zrangebyscore", 0)
    return CommandsPerPoll(
        dict(sorted(top.items(), key=lambda kv: -kv[1])),
        dict(sorted(inner.items(), key=lambda kv: -kv[1])),
        sum(top.values()),
        sum(top.values()) + sum(inner.values()),
        top_usec / polls,
        claims / polls,
        run.polls / claims if claims else math.nan,
    )


# --- 4/profile. the worker in this process ---------------------------------------------------


@contextlib.asynccontextmanager
async def in_process_worker(cfg: Config, redis_url: str, namespace: str) -> AsyncIterator[Any]:
    from worker.process import Worker

    settings = Settings(
        redis_url=redis_url,
        namespace=namespace,
        allowed_networks=LOOPBACK,
        worker_concurrency=cfg.concurrency,
        per_host_concurrency=cfg.host_limit,
    )
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        while worker.poller is None:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield worker
    finally:
        worker.stop()
        await task


async def measure_lateness(
    sim: Simulator,
    redis: aioredis.Redis,
    redis_url: str,
    urls: Sequence[str],
    cfg: Config,
    capacity: float,
) -> Lateness:
    namespace = f"bench-late-{secrets.token_hex(4)}"
    store = Store(redis, namespace=namespace)
    target = capacity / 2
    count = max(1, round(target * cfg.lateness_period))
    period = cfg.lateness_period
    policy = Policy(initial_wait_time=period, backoff_factor=1, jitter=0, max_interval=period)
    try:
        async with in_process_worker(cfg, redis_url, namespace) as worker:
            # Register at the target rate so the watches are spread evenly over one period.
            started, done, tick = time.monotonic(), 0, 0.01
            while done < count:
                due = min(count, math.ceil((time.monotonic() - started) / period * count) + 1)
                specs = [spec_for(urls[i % len(urls)], policy) for i in range(done, due)]
                done += await register_all(store, specs)
                await asyncio.sleep(tick)
            await asyncio.sleep(max(cfg.warmup, period))
            poller = worker.poller
            poller.lateness_ms.clear()
            polls0, t0, cpu0 = poller.polls, time.monotonic(), time.process_time()
            calls0 = await command_calls(redis)
            await asyncio.sleep(cfg.lateness_window)
            samples = list(poller.lateness_ms)
            polls = poller.polls - polls0
            achieved = polls / (time.monotonic() - t0)
            cpu_us = (time.process_time() - cpu0) / max(1, polls) * 1e6
            calls1 = await command_calls(redis)
            skews = await schedule_skew(store, period)
    finally:
        await delete_namespace(redis, namespace)
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
        (calls1.get("zrangebyscore", 0) - calls0.get("zrangebyscore", 0)) / max(1, polls),
        sum(calls1.get(n, 0) - calls0.get(n, 0) for n in TOP_LEVEL_SCRIPTS) / max(1, polls),
        cpu_us,
    )


async def command_calls(redis: aioredis.Redis) -> dict[str, int]:
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


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


async def schedule_skew(store: Store, period: float) -> list[float]:
    """Per watch not leased right now: its schedule score minus its doc's `next_poll_at` (ms),
    read in one atomic step while the worker runs."""
    k = store.keys
    reply = await store.redis.eval(SNAPSHOT_LUA, 1, k.schedule, k.watch_prefix)
    now, rest = int(reply[0]), reply[1:]
    skews = []
    for score, raw in zip(rest[::2], rest[1::2], strict=True):
        doc = json.loads(raw) if raw else None
        leased = float(score) > now + 2 * period * 1000
        if doc and not leased and doc["attempts"] and doc["next_poll_at"] is not None:
            skews.append(float(score) - doc["next_poll_at"])
    return skews


async def measure_profile(store: Store, redis_url: str, cfg: Config) -> Profile:
    await release_leases(store)
    # The CPU clock is exact under machine load but slows the worker several times over.
    profiler = cProfile.Profile(time.process_time) if cfg.profile == "cpu" else cProfile.Profile()
    async with in_process_worker(cfg, redis_url, store.keys.namespace) as worker:
        await asyncio.sleep(cfg.warmup)
        polls0, t0 = worker.poller.polls, time.monotonic()
        profiler.enable()
        await asyncio.sleep(cfg.window)
        profiler.disable()
        seconds = time.monotonic() - t0
        polls = worker.poller.polls - polls0
    await release_leases(store)

    def top(order: str) -> list[str]:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(15)
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        return [line.rstrip() for line in lines[start:] if line.strip()]

    return Profile(seconds, polls / seconds, top("cumulative"), top("tottime"))


# --- 5. memory -------------------------------------------------------------------------------


async def measure_memory(redis: aioredis.Redis, watches: int) -> Memory:
    namespace = f"bench-mem-{secrets.token_hex(4)}"
    store = Store(redis, namespace=namespace)
    base = spec_for(MEMORY_URL.format(1), Policy(), MEMORY_METADATA)
    try:
        before = int((await redis.info("memory"))["used_memory"])
        specs = ({**base, "status_url": MEMORY_URL.format(12_345 + i)} for i in range(watches))
        await register_all(store, specs, deadline=Policy().max_wait_time)
        after = int((await redis.info("memory"))["used_memory"])
        k = store.keys
        sample = cast(list[str], await redis.zrange(k.schedule, 0, 0))[0]
        keys = {
            "watch doc (STRING)": (k.watch(sample), 1),
            "schedule ZSET /watch": (k.schedule, watches),
            "tenant index ZSET /watch": (k.index(TENANT), watches),
            "pending index ZSET /watch": (k.index(TENANT, "pending"), watches),
        }
        usage = {}
        for label, (key, n) in keys.items():
            used = await redis.memory_usage(key, samples=0)
            usage[label] = (used or 0) / n
    finally:
        await delete_namespace(redis, namespace)
    return Memory(watches, before, after, (after - before) / watches, usage)


# --- the whole run ---------------------------------------------------------------------------


async def run_benchmark(cfg: Config) -> Report:
    namespace = f"bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="vtw-bench-") as tmp:
        folder = Path(tmp)
        procs: list[Proc] = []
        try:
            if cfg.shared_redis:
                redis_url, where = cfg.redis_url, f"shared {cfg.redis_url}"
            else:
                redis_proc, redis_url = start_redis(folder)
                procs.append(redis_proc)
                await wait_redis(redis_proc, redis_url)
                where = f"private redis-server ({redis_url})"
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, decode_responses=True, max_connections=REGISTER_PARALLEL + 4
            )
            redis = aioredis.Redis(connection_pool=pool)
            version = (await redis.info("server"))["redis_version"]
            report = Report(asdict(cfg), f"{where}, Redis {version}")
            try:
                await measure_all(cfg, report, redis, redis_url, namespace, folder, procs)
            finally:
                await delete_namespace(redis, namespace)
                await redis.aclose()
        finally:
            for proc in reversed(procs):
                await proc.stop()
    return report


async def measure_all(
    cfg: Config,
    report: Report,
    redis: aioredis.Redis,
    redis_url: str,
    namespace: str,
    folder: Path,
    procs: list[Proc],
) -> None:
    port = free_port()
    vtwatch = str(Path(sys.executable).with_name("vtwatch"))
    sim_proc = Proc(
        "simulator",
        [vtwatch, "simulate", "--host", "127.0.0.1", "--port", str(port)],
        folder / "simulator.log",
        child_env({}),
    )
    procs.append(sim_proc)
    base = f"http://127.0.0.1:{port}"
    await wait_http(sim_proc, f"{base}/stats")
    async with aiohttp.ClientSession() as session:
        sim = Simulator(sim_proc, base, session)
        urls = await sim.create_jobs(cfg.watches)
        urls_file = folder / "urls.txt"
        urls_file.write_text("\n".join(urls))
        store = Store(redis, namespace=namespace)
        saturate = Policy(initial_wait_time=0.05, backoff_factor=1, jitter=0, max_interval=0.05)
        t0 = time.monotonic()
        base_spec = spec_for(urls[0], saturate)
        await register_all(store, ({**base_spec, "status_url": u} for u in urls))
        log(f"registered {cfg.watches} watches in {time.monotonic() - t0:.1f} s")

        for i in range(cfg.repeats):
            bare = await run_bare(sim, urls_file, cfg, folder)
            report.bare.append(bare)
            log(f"run {i + 1}: bare loop {bare.req_per_s:.0f} req/s")
            run = await run_worker(sim, store, redis_url, cfg, folder, i)
            report.worker.append(run)
            log(f"run {i + 1}: worker {run.polls_per_s:.0f} polls/s")
        report.bare_median = statistics.median(b.req_per_s for b in report.bare)
        report.worker_median = statistics.median(w.polls_per_s for w in report.worker)
        report.ratio = report.worker_median / report.bare_median
        bare_us = [b.cpu_us_per_request for b in report.bare if b.cpu_us_per_request]
        worker_us = [w.cpu_us_per_poll for w in report.worker if w.cpu_us_per_poll]
        if bare_us and worker_us:
            report.bare_cpu_us_median = statistics.median(bare_us)
            report.worker_cpu_us_median = statistics.median(worker_us)
            report.cpu_cost_ratio = report.worker_cpu_us_median / report.bare_cpu_us_median
        median_run = sorted(report.worker, key=lambda w: w.polls_per_s)[len(report.worker) // 2]
        report.commands = per_poll(median_run, script_commands())

        if cfg.lateness_window > 0:
            report.lateness = await measure_lateness(
                sim, redis, redis_url, urls, cfg, report.worker_median
            )
            log(f"lateness p50 {report.lateness.p50_ms} ms, p99 {report.lateness.p99_ms} ms")
        if cfg.profile:
            report.profile = await measure_profile(store, redis_url, cfg)
            log(f"profiled run: {report.profile.polls_per_s:.0f} polls/s")
    await delete_namespace(redis, namespace)
    if cfg.memory_watches > 0:
        report.memory = await measure_memory(redis, cfg.memory_watches)
        log(f"memory: {report.memory.bytes_per_watch:.0f} B/watch")


# --- output ----------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(report: Report) -> str:
    cfg = report.config
    host = cfg["per_host_concurrency"] or cfg["concurrency"]
    lines = [
        f"Worker benchmark: C={cfg['concurrency']} for both loops (worker per-host limit {host}), "
        f"{cfg['watches']:,} saturated watches, window {cfg['window']:g} s after "
        f"{cfg['warmup']:g} s, {cfg['repeats']} interleaved repeats",
        f"Redis: {report.redis}",
        "cores = CPU per wall second of: measured process / simulator / Redis / rest of machine",
        "",
        "run   bare req/s  CPU us/req  cores                  worker polls/s  CPU us/poll  "
        "cores                  ratio",
    ]
    for i, (b, w) in enumerate(zip(report.bare, report.worker, strict=True), 1):
        lines.append(
            f"{i:>3}  {b.req_per_s:>11,.0f}  {fmt_us(b.cpu_us_per_request):>10}  {b.cpu!s:<21}"
            f"  {w.polls_per_s:>14,.0f}  {fmt_us(w.cpu_us_per_poll):>11}  {w.cpu!s:<21}"
            f"  {w.polls_per_s / b.req_per_s:.2f}"
        )
    verdict = "meets" if report.ratio >= 0.6 else "BELOW"
    lines += [
        f"med  {report.bare_median:>11,.0f}  {fmt_us(report.bare_cpu_us_median):>10}  {'':<21}"
        f"  {report.worker_median:>14,.0f}  {fmt_us(report.worker_cpu_us_median):>11}",
        f"ratio of medians, worker polls/s / bare req/s: {report.ratio:.2f} ({verdict} the 0.6 "
        f"target); CPU per poll / CPU per bare request: {fmt_x(report.cpu_cost_ratio)}",
    ]
    problems = [
        f"run {i}: {w.non_200} non-200, {w.leases_left} leases left, {w.log_problems} log warnings"
        for i, w in enumerate(report.worker, 1)
        if w.non_200 or w.leases_left or w.log_problems
    ]
    problems += [
        f"bare run {i}: {b.errors} errors" for i, b in enumerate(report.bare, 1) if b.errors
    ]
    lines += [f"  ! {p}" for p in problems]
    c = report.commands
    if c is not None:
        lines += [
            "",
            "Redis commands per poll (median worker run)",
            "  (a) top-level, sent by the worker:",
            *(f"      {n:<16} {v:8.3f}" for n, v in c.top_level.items()),
            f"      {'total':<16} {c.top_level_total:8.3f}",
            "  inside Lua scripts (counted by Redis, never sent on the wire):",
            *(f"      {n:<16} {v:8.3f}" for n, v in c.inside_scripts.items()),
            f"  (b) all commands, top-level + inside scripts: {c.all_total:.3f} per poll",
            f"  claims (claim.lua runs, poller and dispatcher) per poll: {c.claims_per_poll:.3f} "
            f"-> {c.watches_per_claim:.1f} polls per claim",
            f"  Redis time (usec of top-level commands) per poll: {c.redis_usec_per_poll:.1f} us",
        ]
    la = report.lateness
    if la is not None:
        lines += [
            "",
            f"Poll lateness at ~half capacity (worker in this process): {la.watches:,} watches "
            f"every {la.period:g} s, target {la.target_polls_per_s:,.0f} polls/s, "
            f"achieved {la.achieved_polls_per_s:,.0f}",
            f"  p50 {fmt_ms(la.p50_ms)} ms, p99 {fmt_ms(la.p99_ms)} ms, max {fmt_ms(la.max_ms)} ms "
            f"({la.samples:,} samples of Poller.lateness_ms: claim time - doc next_poll_at)",
            f"  schedule due time - doc next_poll_at: p50 {fmt_ms(la.skew_p50_ms)} ms, "
            f"p99 {fmt_ms(la.skew_p99_ms)} ms (the record round trip; part of the lateness above)",
            f"  at this rate: {la.claims_per_poll:.2f} claims and {la.scripts_per_poll:.2f} "
            f"EVALSHA per poll, {la.cpu_us_per_poll:,.0f} us worker CPU per poll",
        ]
    m = report.memory
    if m is not None:
        lines += [
            "",
            f"Redis memory per pending watch at {m.watches:,} watches: {m.bytes_per_watch:,.0f} B "
            f"(used_memory {m.used_before / 2**20:.1f} -> {m.used_after / 2**20:.1f} MiB)",
            *(f"  {label:<26} {v:8,.0f} B" for label, v in m.key_bytes.items()),
        ]
    p = report.profile
    if p is not None:
        lines += [
            "",
            f"cProfile ({cfg['profile']} clock) of a saturated in-process worker "
            f"({p.polls_per_s:,.0f} polls/s under the profiler, {p.seconds:.0f} s), "
            "top 15 by cumulative time:",
            *(f"  {line}" for line in p.by_cumulative),
            "top 15 by own time:",
            *(f"  {line}" for line in p.by_own_time),
        ]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--watches", type=positive_int, default=d.watches, help="saturated watches (%(default)s)")
    add("--concurrency", type=positive_int, default=d.concurrency, help="C of both loops")
    add("--per-host-concurrency", type=positive_int, default=None, help="worker's; default C")
    add("--requests", type=positive_int, default=d.requests, help="bare loop requests per run")
    add("--repeats", type=positive_int, default=d.repeats, help="interleaved runs (%(default)s)")
    add("--warmup", type=float, default=d.warmup, help="seconds before each window")
    add("--window", type=float, default=d.window, help="seconds measured per worker run")
    add("--lateness-period", type=float, default=d.lateness_period, help="poll interval, s")
    add("--lateness-window", type=float, default=d.lateness_window, help="0 skips lateness")
    add("--memory-watches", type=int, default=d.memory_watches, help="0 skips memory")
    add(
        "--profile",
        nargs="?",
        const="wall",
        choices=["wall", "cpu"],
        help="also profile an in-process saturated worker (clock: wall, the default, or cpu)",
    )
    add("--redis-url", default=d.redis_url, help="with --shared-redis (%(default)s)")
    add("--shared-redis", action="store_true", help="use --redis-url, not a private redis-server")
    add("--json", action="store_true", help="print JSON instead of a table")
    add("--child-bare", metavar="URLS_FILE", help=argparse.SUPPRESS)
    add("--sim-pid", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_bare:
        bare_child_main(args.child_bare, args.concurrency, args.requests, args.sim_pid)
        return 0
    cfg = Config(
        watches=args.watches,
        concurrency=args.concurrency,
        per_host_concurrency=args.per_host_concurrency,
        requests=args.requests,
        repeats=args.repeats,
        warmup=args.warmup,
        window=args.window,
        lateness_period=args.lateness_period,
        lateness_window=args.lateness_window,
        memory_watches=args.memory_watches,
        profile=args.profile,
        shared_redis=args.shared_redis,
        redis_url=args.redis_url,
    )
    report = asyncio.run(run_benchmark(cfg))
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
