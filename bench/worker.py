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
     and C coroutines doing `GET <job status URL>` + `read()`; req/s is counted like the
     worker's polls/s, over `--window` seconds after `--warmup` seconds;
  2. **worker**: `vtwatch worker` as its own process (`VTW_WORKER_CONCURRENCY=C`,
     `VTW_PER_HOST_CONCURRENCY`, `VTW_ALLOWED_NETWORKS=127.0.0.0/8,::1/128`) on `--watches`
     pending watches registered through `Store.register`, policy 0.05 s / factor 1 / no jitter /
     cap 0.05 s, so every watch is due again at once (saturation). polls/s = the simulator's
     `/stats` request counter over `--window` seconds after `--warmup` seconds.
  3. with `--processes N` (N > 1), **N worker processes**: `vtwatch worker --processes N` (a
     supervisor and N workers; CPU summed over the process tree), the same window: their
     aggregate polls/s beside the one process's (on a 2-core machine the simulator and Redis
     share the cores: a figure, no target).
  The headline is median(worker polls/s) / median(bare req/s) (target >= 0.85, issue 20) and
  the worker's CPU per poll / the bare loop's CPU per request (target <= 1.25).
* **Redis commands per poll** over each worker window (`INFO commandstats` before/after). Redis
  counts the commands a Lua script runs as well as the EVALSHA that ran it, so the table splits
  them: *top-level* = EVALSHA/EVAL plus every command no script uses (what the worker sends);
  *inside scripts* = the commands `service/store/lua/*.lua` call (TIME and ZRANGEBYSCORE are also
  sent directly by the retention sweep, once a minute, so at most one each per window);
* **poll lateness** (`Poller.lateness_ms`, which only the bench turns on: claim time minus the
  watch's `next_poll_at`) p50/p99 with the worker *in this process* (the simulator still
  apart), on K staggered watches polled every `--lateness-period` s, K chosen for ~half the
  measured worker capacity; beside it, the gap between a watch's real due time (its schedule
  score, Redis TIME inside `record`) and the `next_poll_at` in its doc, read atomically at the
  end of the window;
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

One module per measurement: `_throughput` (bare loop, worker process, CPU accounting),
`_redis_stats`, `_lateness`, `_memory`, `_profile`; what they share is in `_fixtures`, `_config`
and `_procs` (processes). This file is the command line, the run's order and the output.

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
import json
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bench._config import Config, log, positive_int
from bench._fixtures import REGISTER_PARALLEL, Simulator, delete_namespace, register_all
from bench._lateness import Lateness, measure_lateness
from bench._memory import Memory, measure_memory
from bench._procs import start_redis, start_simulator, wait_http, wait_redis
from bench._profile import TOP, Profile, measure_profile
from bench._redis_stats import CommandsPerPoll, per_poll
from bench._throughput import (
    BareRun,
    WorkerRun,
    bare_child_main,
    run_bare,
    run_worker,
    saturated_specs,
)
from service.store.watches import Store

TARGET_RATIO = 0.85  # issue 20: worker polls/s >= 0.85 x the bare loop's req/s


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    redis: str
    bare: list[BareRun] = field(default_factory=list)
    worker: list[WorkerRun] = field(default_factory=list)
    multi: list[WorkerRun] = field(default_factory=list)  # `--processes N`, N > 1
    bare_median: float = 0.0
    worker_median: float = 0.0
    multi_median: float | None = None  # polls/s of the N processes together
    multi_cpu_us_median: float | None = None
    ratio: float = 0.0
    bare_cpu_us_median: float | None = None
    worker_cpu_us_median: float | None = None
    cpu_cost_ratio: float | None = None
    commands: CommandsPerPoll | None = None
    lateness: Lateness | None = None
    memory: Memory | None = None
    profile: Profile | None = None


# --- the whole run ---------------------------------------------------------------------------


async def run_benchmark(cfg: Config) -> Report:
    with tempfile.TemporaryDirectory(prefix="vtw-bench-") as tmp:
        folder = Path(tmp)
        async with contextlib.AsyncExitStack() as cleanup:  # stops what started, in reverse
            if cfg.shared_redis:
                redis_url, where = cfg.redis_url, f"shared {cfg.redis_url}"
            else:
                redis_proc, redis_url = start_redis(folder)
                cleanup.push_async_callback(redis_proc.stop)
                await wait_redis(redis_proc, redis_url)
                where = f"private redis-server ({redis_url})"
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, decode_responses=True, max_connections=REGISTER_PARALLEL + 4
            )
            redis = aioredis.Redis(connection_pool=pool)
            cleanup.push_async_callback(redis.aclose)
            version = (await redis.info("server"))["redis_version"]
            report = Report(asdict(cfg), f"{where}, Redis {version}")
            sim_proc, sim_url = start_simulator(folder)
            cleanup.push_async_callback(sim_proc.stop)
            await wait_http(sim_proc, f"{sim_url}/stats")
            store = Store(redis, namespace=f"bench-{secrets.token_hex(4)}")
            try:
                async with aiohttp.ClientSession() as session:
                    sim = Simulator(sim_proc, sim_url, session)
                    await measure_polling(cfg, report, sim, store, redis_url, folder)
            finally:
                await delete_namespace(store)
            if cfg.memory_watches > 0:
                report.memory = await measure_memory(redis, cfg.memory_watches)
                log(f"memory: {report.memory.bytes_per_watch:.0f} B/watch")
    return report


async def measure_polling(
    cfg: Config, report: Report, sim: Simulator, store: Store, redis_url: str, folder: Path
) -> None:
    """Saturated watches in `store`; interleaved bare and worker runs; lateness; profile."""
    urls = await sim.create_jobs(cfg.watches)
    urls_file = folder / "urls.txt"
    urls_file.write_text("\n".join(urls))
    t0 = time.monotonic()
    await register_all(store, saturated_specs(urls))
    log(f"registered {cfg.watches} watches in {time.monotonic() - t0:.1f} s")

    for i in range(cfg.repeats):
        bare = await run_bare(sim, urls_file, cfg, folder)
        report.bare.append(bare)
        log(f"run {i + 1}: bare loop {bare.req_per_s:.0f} req/s")
        run = await run_worker(sim, store, redis_url, cfg, folder, i)
        report.worker.append(run)
        log(f"run {i + 1}: worker {run.polls_per_s:.0f} polls/s")
        if cfg.processes > 1:
            multi = await run_worker(sim, store, redis_url, cfg, folder, i, cfg.processes)
            report.multi.append(multi)
            log(f"run {i + 1}: {cfg.processes} worker processes {multi.polls_per_s:.0f} polls/s")
    summarize(report)

    if cfg.lateness_window > 0:
        report.lateness = await measure_lateness(
            store.redis, redis_url, urls, cfg, report.worker_median
        )
        log(f"lateness p50 {report.lateness.p50_ms} ms, p99 {report.lateness.p99_ms} ms")
    if cfg.profile:
        report.profile = await measure_profile(store, redis_url, cfg)
        log(f"profiled run: {report.profile.polls_per_s:.0f} polls/s")


def summarize(report: Report) -> None:
    """Medians of the runs, their ratios, and the median worker run's Redis commands."""
    report.bare_median = statistics.median(b.req_per_s for b in report.bare)
    report.worker_median = statistics.median(w.polls_per_s for w in report.worker)
    report.ratio = report.worker_median / report.bare_median
    bare_us = [b.cpu_us_per_request for b in report.bare if b.cpu_us_per_request]
    worker_us = [w.cpu_us_per_poll for w in report.worker if w.cpu_us_per_poll]
    if bare_us and worker_us:
        report.bare_cpu_us_median = statistics.median(bare_us)
        report.worker_cpu_us_median = statistics.median(worker_us)
        report.cpu_cost_ratio = report.worker_cpu_us_median / report.bare_cpu_us_median
    if report.multi:
        report.multi_median = statistics.median(m.polls_per_s for m in report.multi)
        multi_us = [m.cpu_us_per_poll for m in report.multi if m.cpu_us_per_poll]
        report.multi_cpu_us_median = statistics.median(multi_us) if multi_us else None
    median_run = sorted(report.worker, key=lambda w: w.polls_per_s)[len(report.worker) // 2]
    report.commands = per_poll(median_run.polls, median_run.commands, median_run.usec)


# --- output ----------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_table(report: Report) -> str:
    cfg = report.config
    host = Config(**cfg).host_limit
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
    verdict = "meets" if report.ratio >= TARGET_RATIO else "BELOW"
    lines += [
        f"med  {report.bare_median:>11,.0f}  {fmt_us(report.bare_cpu_us_median):>10}  {'':<21}"
        f"  {report.worker_median:>14,.0f}  {fmt_us(report.worker_cpu_us_median):>11}",
        f"ratio of medians, worker polls/s / bare req/s: {report.ratio:.2f} ({verdict} the "
        f"{TARGET_RATIO} target); CPU per poll / CPU per bare request: "
        f"{fmt_x(report.cpu_cost_ratio)} (target <= 1.25x)",
    ]
    if report.multi:
        n = cfg["processes"]
        lines += [
            "",
            f"{n} worker processes (`vtwatch worker --processes {n}`) beside one, same repeats:",
            "run   one process polls/s  cores                  "
            f"{n} processes polls/s  CPU us/poll  cores",
            *(
                f"{i:>3}  {w.polls_per_s:>20,.0f}  {w.cpu!s:<21}  {m.polls_per_s:>20,.0f}"
                f"  {fmt_us(m.cpu_us_per_poll):>11}  {m.cpu!s}"
                for i, (w, m) in enumerate(zip(report.worker, report.multi, strict=True), 1)
            ),
            f"med  {report.worker_median:>20,.0f}  {'':<21}  {report.multi_median or 0:>20,.0f}"
            f"  {fmt_us(report.multi_cpu_us_median):>11}",
            f"aggregate of {n} processes / one process: "
            f"{(report.multi_median or 0) / report.worker_median:.2f}x "
            "(the simulator and Redis share the same cores: a figure, no target)",
        ]
    problems = [
        f"run {i}: {w.non_200} non-200, {w.leases_left} leases left, {w.log_problems} log warnings"
        for i, w in enumerate(report.worker, 1)
        if w.non_200 or w.leases_left or w.log_problems
    ]
    problems += [
        f"{cfg['processes']} processes, run {i}: {w.non_200} non-200, {w.leases_left} leases "
        f"left, {w.log_problems} log warnings"
        for i, w in enumerate(report.multi, 1)
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
            f"top {TOP} by cumulative time:",
            *(f"  {line}" for line in p.by_cumulative),
            f"top {TOP} by own time:",
            *(f"  {line}" for line in p.by_own_time),
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = Config()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--watches", type=positive_int, default=d.watches, help="saturated watches (%(default)s)")
    add("--concurrency", type=positive_int, default=d.concurrency, help="C of both loops")
    add("--per-host-concurrency", type=positive_int, default=None, help="worker's; default C")
    add("--repeats", type=positive_int, default=d.repeats, help="interleaved runs (%(default)s)")
    add(
        "--processes",
        type=positive_int,
        default=d.processes,
        help="also run `vtwatch worker --processes N` in each repeat (aggregate polls/s)",
    )
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
        bare_child_main(args.child_bare, args.concurrency, args.warmup, args.window, args.sim_pid)
        return 0
    cfg = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    report = asyncio.run(run_benchmark(cfg))
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
