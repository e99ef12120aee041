"""Throughput at saturation: the bare aiohttp loop (a child process) against `vtwatch worker`
(a process) on the same simulator, each with its CPU accounting per wall second and per request.

CPU is read from /proc/<pid>/stat for our processes, `INFO cpu` for Redis, and /proc/stat for
the whole machine; "other" is the machine's busy time minus the rest.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench._config import Config, log
from bench._fixtures import Simulator, release_leases, spec_for, worker_env
from bench._procs import Proc, cpu_seconds, machine_busy, vtwatch
from bench._redis_stats import CommandStats, command_stats, difference, redis_cpu_seconds
from service.api.schemas import Policy
from service.store.watches import Store
from worker.cli import run_async
from worker.process import tune_gc

ENTRY = Path(__file__).resolve().with_name("worker.py")  # runs the bare loop with --child-bare
# Every watch is due again at once: the worker polls as fast as it can.
SATURATE = Policy(initial_wait_time=0.05, backoff_factor=1, jitter=0, max_interval=0.05)


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


def saturated_specs(urls: Sequence[str]) -> Iterator[dict[str, Any]]:
    """One saturating watch spec per URL (validated once, not per URL)."""
    base = spec_for(urls[0], SATURATE)
    return ({**base, "status_url": url} for url in urls)


# --- the bare loop (a child process) ---------------------------------------------------------


async def bare_loop(
    urls: Sequence[str], concurrency: int, warmup: float, window: float, sim_pid: int
) -> dict[str, Any]:
    """GETs with `concurrency` coroutines on one session for `warmup` + `window` seconds; the
    rate over the window (the worker's measure: the same warm-up, the same length)."""
    issued = done = errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run() -> None:
            nonlocal issued, done, errors
            while not stop.is_set():
                url = urls[issued % len(urls)]
                issued += 1
                try:
                    async with session.get(url) as response:
                        await response.read()
                        errors += response.status != 200
                except aiohttp.ClientError:
                    errors += 1
                done += 1

        stop = asyncio.Event()
        runners = [asyncio.create_task(run()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        start, counted = CpuMarks(time.process_time(), sim_pid), done
        await asyncio.sleep(window)
        end, counted = CpuMarks(time.process_time(), sim_pid), done - counted
        stop.set()
        await asyncio.gather(*runners)
    return {
        "requests": counted,
        "seconds": end.at - start.at,
        "errors": errors,
        "cpu": asdict(start.until(end)),
    }


def bare_child_main(
    urls_file: str, concurrency: int, warmup: float, window: float, sim_pid: int
) -> None:
    """The child's side of `run_bare`: the result as one JSON line on stdout."""
    urls = Path(urls_file).read_text().split()
    result: dict[str, Any] = {}

    async def measure() -> None:
        result.update(await bare_loop(urls, concurrency, warmup, window, sim_pid))

    tune_gc()  # like for like: the worker's garbage-collector settings ...
    run_async(measure())  # ... and its event loop (uvloop if installed)
    print(json.dumps(result), flush=True)


async def run_bare(sim: Simulator, urls_file: Path, cfg: Config, folder: Path) -> BareRun:
    argv = [sys.executable, str(ENTRY), "--child-bare", str(urls_file)]
    argv += ["--concurrency", str(cfg.concurrency)]
    argv += ["--warmup", str(cfg.warmup), "--window", str(cfg.window)]
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


# --- the worker process ----------------------------------------------------------------------


@dataclass(slots=True)
class Snapshot:
    ok: int
    non_200: int
    commands: CommandStats
    cpu: CpuMarks


async def snapshot(sim: Simulator, store: Store, worker: Proc) -> Snapshot:
    stats = await sim.stats()
    commands = await command_stats(store.redis)
    redis_cpu = await redis_cpu_seconds(store.redis)
    ok = int(stats["by_status"].get("200", 0))
    return Snapshot(
        ok,
        int(stats["requests"]) - ok,
        commands,
        CpuMarks(worker.cpu(), sim.proc.pid, redis_cpu),
    )


async def wait_first_polls(sim: Simulator, proc: Proc, timeout: float = 30.0) -> None:
    before = (await sim.stats())["requests"]
    deadline = time.monotonic() + timeout
    while (await sim.stats())["requests"] == before:
        if not proc.alive():
            raise RuntimeError(f"worker exited early:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("the worker made no request to the simulator (SSRF guard?)")
        await asyncio.sleep(0.05)


async def run_worker(
    sim: Simulator,
    store: Store,
    redis_url: str,
    cfg: Config,
    folder: Path,
    index: int,
    processes: int = 1,
) -> WorkerRun:
    """One `vtwatch worker` (with `processes` > 1: `--processes N`, a supervisor and N worker
    processes, CPU summed over them) over the window."""
    env = worker_env(cfg, redis_url, store.keys.namespace)
    env["VTW_METRICS_PORT"] = "0"  # N processes would need N ports; no scrape here anyway
    argv = vtwatch("--log-level", "warning", "worker")
    if processes > 1:
        argv += ["--processes", str(processes)]
    proc = Proc("worker", argv, folder / f"worker-{index}-x{processes}.log", env)
    try:
        await wait_first_polls(sim, proc)
        await asyncio.sleep(cfg.warmup)
        a = await snapshot(sim, store, proc)
        await asyncio.sleep(cfg.window)
        b = await snapshot(sim, store, proc)
    finally:
        code = await proc.stop(grace=30)
    if code not in (0, -15):
        log(f"worker exited with {code}:\n{proc.tail()}")
    seconds = b.cpu.at - a.cpu.at
    polls = b.ok - a.ok
    cpu = a.cpu.until(b.cpu)
    calls, usec = difference(a.commands, b.commands)
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
