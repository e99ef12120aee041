"""Benchmark: what push callbacks buy (issue 19) — real processes on loopback, the same jobs
watched with callbacks and without.

What runs, all on 127.0.0.1: a private `redis-server` (`--save "" --appendonly no`), one
`vtwatch api` (API keys: one tenant per run), one `vtwatch worker` (loopback admitted,
`VTW_MIN_POLL_INTERVAL` at its default of 1 s, the host budget far out of the way: the default
20/s would pace the polling run's bursts, which is another benchmark's subject), and one
simulator process per run (`vtwatch simulate --callback-loss-rate 0.1 --seed N`, callback delay
0), so the runs share no upstream: neither its learned durations nor its host state.

`--jobs` (500) jobs with durations log-uniform in [`--min-duration`, `--max-duration`]
(1-55 s, drawn from `--seed`) start over `--spread` (5) s; every run gets the same durations.
With callbacks the caller needs the watch's `callback_url` to create the job, and the watch needs
the job's status URL: per job, pick its id; register the watch (`status_url`
`<sim>/jobs/<id>/status`); `POST /jobs` with that `id`, its duration and the `callback_url`. A
watch with callbacks makes its first poll at its `initial_wait_time` (not at registration), so
that poll never comes before its job exists (the 404s are counted: 0 expected), and it follows no
learned schedule. Without callbacks the job is created first, then its watch, as before. The
simulator pushes each job's end at its end, except a share `--loss-rate` (0.1) drawn as lost.
The runs (phase 1 alone, then phase 2's two side by side, their job k started together):

- **push** (phase 1): `"callback": true`, policy `initial_wait_time` `--initial-wait` (60 s:
  longer than the longest job, so a pushed job costs the confirming poll alone; a lost push is
  found by the safety-net poll a minute after registration), `max_interval`
  `--max-interval` (300 s), `max_wait_time` `--max-wait` (900 s). The judged run.
- **push-default-wait** (phase 2): the same with the default `initial_wait_time` (1 s, x2):
  what the default safety-net polls cost while the jobs run.
- **poll** (phase 2): no callback, the default policy (`max_wait_time` the same): polling alone.

Measured per job: its end (the simulator's `ends_at`, on its monotonic clock, moved to wall
time by the least `time.time() - now` over the `GET /jobs/{id}` answers: all on one machine);
the watch's `finished_at` (`GET /v1/watches/{id}`, Redis time); detection latency = the two's
difference; requests per job (the watch's `attempts`: the job's `requests` plus any 404 before
it existed, checked against the simulator's counts); the push (`sent`, `lost`, or `failed`:
answered other than 2xx, such as 404 for a watch a poll had already ended); the final state.
Targets, on the push run: p95 detection latency <= 0.5 s for pushed jobs, mean requests per job
<= 2.5, no `timeout`; every watch of every run `completed`. The exit status is 1 if one fails.

Run from the repository root (about 3.5 minutes with the defaults):

    .venv/bin/python bench/callbacks.py             # the table (or: python -m bench.callbacks)
    .venv/bin/python bench/callbacks.py --json      # the same as JSON
    .venv/bin/python bench/callbacks.py --quick     # 20 jobs of 1-3 s, first wait 5 s (~15 s)
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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis

from bench._config import log, positive_int
from bench._fixtures import LOOPBACK, settings_env
from bench._lateness import percentile
from bench._procs import (
    Proc,
    free_port,
    start_redis,
    start_simulator,
    vtwatch,
    wait_http,
    wait_redis,
)
from service.store.watches import Store

TERMINAL = ("completed", "error", "timeout", "cancelled")
HOST_RATE_LIMIT = 100_000.0  # the fleet-wide host budget, out of the way
PARALLEL = 32  # concurrent reads of the results
LATENCY_BAR = 0.5  # s, p95 of pushed jobs
REQUESTS_BAR = 2.5  # mean requests per job
MARGIN = 60.0  # s the wait for the watches' ends may run past the policy's deadline


@dataclass(frozen=True, slots=True)
class CallbacksConfig:
    jobs: int = 500
    min_duration: float = 1.0
    max_duration: float = 55.0
    spread: float = 5.0  # s over which the jobs start
    seed: int = 0
    loss_rate: float = 0.1  # the simulator's --callback-loss-rate
    initial_wait: float = 60.0  # the push run's initial_wait_time
    max_interval: float = 300.0  # both push runs' max_interval
    max_wait: float = 900.0  # every run's max_wait_time


QUICK = CallbacksConfig(jobs=20, max_duration=3.0, spread=1.0, initial_wait=5.0, max_wait=60.0)


@dataclass(frozen=True, slots=True)
class RunSpec:
    name: str  # also its tenant
    callback: bool  # with it, the watch is registered before its job is created
    policy: dict[str, Any]
    judged: bool = False
    phase: int = 1  # runs of one phase go side by side, phases one after the other


def run_specs(cfg: CallbacksConfig) -> list[RunSpec]:
    push = {"max_interval": cfg.max_interval, "max_wait_time": cfg.max_wait}
    net = {"initial_wait_time": cfg.initial_wait, **push}
    return [
        RunSpec("push", True, net, judged=True),
        RunSpec("push-default-wait", True, push, phase=2),
        RunSpec("poll", False, {"max_wait_time": cfg.max_wait}, phase=2),
    ]


@dataclass(slots=True)
class Latencies:
    count: int
    p50: float | None
    p95: float | None
    max: float | None
    mean: float | None


@dataclass(slots=True)
class RunResult:
    name: str
    callback: bool
    policy: dict[str, Any]
    jobs: int
    by_state: dict[str, int]
    timeouts: int
    pushes: dict[str, int]  # sent, lost, failed (as the simulator saw them)
    requests_mean: float  # the watch's attempts: every request it sent, a 404 included
    requests_max: int
    requests_by_push: dict[str, float]  # mean requests per job, by its push
    host_requests: int  # status requests the run's simulator answered, 404s included
    not_yet: int  # ...of which 404: a first poll that came before its job
    attempts_mismatched: int  # attempts != the job's requests + the 404s before it
    latency_all: Latencies
    latency_by_push: dict[str, Latencies]  # sent, lost, failed; "none" without callbacks
    slowest: list[dict[str, Any]]  # the few slowest jobs of the run
    seconds: float  # from the phase's start to the run's last watch's end
    started_over: float = 0.0  # s from the first job's creation to the last's
    setup_ms_p50: float | None = None  # registration + job creation, per job
    setup_ms_max: float | None = None
    met: dict[str, bool] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    redis: str
    runs: list[RunResult] = field(default_factory=list)

    @property
    def met(self) -> dict[str, bool]:
        return {f"{r.name}: {k}": v for r in self.runs for k, v in r.met.items()}


@dataclass(slots=True)
class Planned:
    run: RunSpec
    job_id: str
    duration: float
    watch_id: str = ""
    registered_at: float = 0.0  # wall time
    created_at: float = 0.0  # wall time, the job's POST answered


def durations(cfg: CallbacksConfig) -> list[float]:
    """The jobs' durations, log-uniform in [min, max], from the seed."""
    rng = random.Random(cfg.seed)
    low, high = math.log(cfg.min_duration), math.log(cfg.max_duration)
    return [round(math.exp(rng.uniform(low, high)), 3) for _ in range(cfg.jobs)]


def summarize(values: Sequence[float]) -> Latencies:
    rounded = [round(v, 3) for v in values]
    return Latencies(
        len(values),
        percentile(rounded, 50),
        percentile(rounded, 95),
        max(rounded, default=None),
        round(statistics.fmean(values), 3) if values else None,
    )


# --- the run ---------------------------------------------------------------------------------


class Bench:
    """The processes and the HTTP session of one benchmark."""

    def __init__(
        self, cfg: CallbacksConfig, session: aiohttp.ClientSession, api: str, keys: dict[str, str]
    ) -> None:
        self.cfg, self.session, self.api, self.keys = cfg, session, api, keys
        self.sims: dict[str, str] = {}  # run name -> simulator base URL

    def auth(self, run: RunSpec) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[run.name]}"}

    async def start(self, plan: Planned) -> None:
        """With callbacks, register the watch of `plan`'s job, then create the job with its id
        and the watch's `callback_url`; without, create the job, then register its watch."""
        run = plan.run
        if run.callback:
            watch = await self.register(plan)
            if not watch.get("callback_url"):
                raise RuntimeError(f"no callback_url (the watch ended at once?): {watch}")
            await self.create(plan, watch["callback_url"])
        else:
            await self.create(plan, None)
            watch = await self.register(plan)
        plan.watch_id = watch["id"]

    async def register(self, plan: Planned) -> dict[str, Any]:
        sim = self.sims[plan.run.name]
        body: dict[str, Any] = {
            "status_url": f"{sim}/jobs/{plan.job_id}/status",
            "policy": plan.run.policy,
            "metadata": {"job": plan.job_id, "duration": plan.duration},
        }
        if plan.run.callback:
            body["callback"] = True
        plan.registered_at = time.time()
        url = f"{self.api}/v1/watches"
        async with self.session.post(url, json=body, headers=self.auth(plan.run)) as answer:
            watch = cast(dict[str, Any], await answer.json())
            if answer.status != 201:
                raise RuntimeError(f"registration answered {answer.status}: {watch}")
        return watch

    async def create(self, plan: Planned, callback_url: str | None) -> None:
        job: dict[str, Any] = {"id": plan.job_id, "duration": plan.duration}
        if callback_url is not None:
            job["callback_url"] = callback_url
        async with self.session.post(f"{self.sims[plan.run.name]}/jobs", json=job) as answer:
            if answer.status != 201:
                raise RuntimeError(f"POST /jobs answered {answer.status}: {await answer.text()}")
        plan.created_at = time.time()

    async def stats(self, run: RunSpec) -> dict[str, Any]:
        async with self.session.get(f"{self.sims[run.name]}/stats") as answer:
            answer.raise_for_status()
            return cast(dict[str, Any], await answer.json())

    async def job(self, plan: Planned) -> tuple[dict[str, Any], float]:
        """The job's details, and `time.time()` when they came."""
        url = f"{self.sims[plan.run.name]}/jobs/{plan.job_id}"
        async with self.session.get(url) as answer:
            answer.raise_for_status()
            details = cast(dict[str, Any], await answer.json())
        return details, time.time()

    async def watch(self, plan: Planned) -> dict[str, Any]:
        url = f"{self.api}/v1/watches/{plan.watch_id}"
        async with self.session.get(url, headers=self.auth(plan.run)) as answer:
            answer.raise_for_status()
            return cast(dict[str, Any], await answer.json())


async def start_all(bench: Bench, plans: list[list[Planned]]) -> None:
    """Job k of every run starts at k / jobs of the spread."""
    began = time.monotonic()
    spread = bench.cfg.spread

    async def start_one(k: int, row: list[Planned]) -> None:
        await asyncio.sleep(max(0.0, began + spread * k / len(plans) - time.monotonic()))
        for plan in row:
            await bench.start(plan)

    await asyncio.gather(*(start_one(k, row) for k, row in enumerate(plans)))


async def wait_done(
    store: Store, specs: list[RunSpec], total: int, timeout: float, procs: list[Proc]
) -> dict[str, float]:
    """Until no run's watch is pending; returns when each run's last one was seen ended."""
    deadline = time.monotonic() + timeout
    ended: dict[str, float] = {}
    while len(ended) < len(specs):
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        for spec in specs:
            if spec.name in ended:
                continue
            counts = await store.counts(spec.name)
            done = sum(int(counts.get(s, 0)) for s in TERMINAL)
            if int(counts.get("pending", 0)) == 0 and done >= total:
                ended[spec.name] = time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"watches still pending after {timeout:g} s")
        await asyncio.sleep(0.5)
    return ended


async def gather_limited(coros: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def measure(bench: Bench, spec: RunSpec, plans: list[Planned]) -> RunResult:
    jobs = await gather_limited([bench.job(p) for p in plans])
    watches = await gather_limited([bench.watch(p) for p in plans])
    # The simulator's clock is monotonic: wall = its time + offset. Each answer bounds the
    # offset from above (it arrived after the simulator read its clock); the least is nearest.
    offset = min(received - details["now"] for details, received in jobs)
    states: Counter[str] = Counter()
    pushes: Counter[str] = Counter()
    latency: dict[str, list[float]] = {}
    requests: dict[str, list[int]] = {}
    rows = []
    mismatched = 0
    stats = await bench.stats(spec)
    not_yet = int(stats["by_status"].get("404", 0))
    for plan, (details, _), watch in zip(plans, jobs, watches, strict=True):
        states[watch["state"]] += 1
        push = details.get("callback") or "none"
        pushes[push] += 1
        requests.setdefault(push, []).append(int(watch["attempts"]))
        mismatched += int(watch["attempts"]) - int(details["requests"])
        if watch["finished_at"] is not None:
            finished = datetime.fromisoformat(watch["finished_at"]).timestamp()
            late = finished - (details["ends_at"] + offset)
            latency.setdefault(push, []).append(late)
            rows.append(
                {
                    "job": plan.job_id,
                    "duration": plan.duration,
                    "push": push,
                    "latency": round(late, 3),
                    "requests": details["requests"],
                    "state": watch["state"],
                }
            )
    every = [r for values in requests.values() for r in values]
    ended = [v for values in latency.values() for v in values]
    return RunResult(
        name=spec.name,
        callback=spec.callback,
        policy=spec.policy,
        jobs=len(plans),
        by_state=dict(sorted(states.items())),
        timeouts=states.get("timeout", 0),
        pushes=dict(sorted(pushes.items())) if spec.callback else {},
        requests_mean=round(statistics.fmean(every), 3),
        requests_max=max(every),
        requests_by_push={k: round(statistics.fmean(v), 3) for k, v in sorted(requests.items())},
        host_requests=int(stats["requests"]),
        not_yet=not_yet,
        attempts_mismatched=mismatched - not_yet,
        latency_all=summarize(ended),
        latency_by_push={k: summarize(v) for k, v in sorted(latency.items())},
        slowest=sorted(rows, key=lambda r: -float(r["latency"]))[:5],
        seconds=0.0,
    )


def judge(result: RunResult, judged: bool) -> None:
    result.met["every watch completed"] = result.by_state == {"completed": result.jobs}
    if not judged:
        return
    sent = result.latency_by_push.get("sent")
    p95 = sent.p95 if sent is not None else None
    result.met[f"p95 latency of pushed jobs <= {LATENCY_BAR:g} s"] = (
        p95 is not None and p95 <= LATENCY_BAR
    )
    result.met[f"mean requests per job <= {REQUESTS_BAR:g}"] = result.requests_mean <= REQUESTS_BAR
    result.met["no timeout"] = result.timeouts == 0


async def run_benchmark(cfg: CallbacksConfig) -> Report:
    specs = run_specs(cfg)
    keys = {spec.name: secrets.token_urlsafe(24) for spec in specs}
    namespace = f"bench-cb-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="vtw-bench-callbacks-") as tmp:
        folder = Path(tmp)
        async with contextlib.AsyncExitStack() as cleanup:  # stops what started, in reverse
            redis_proc, redis_url = start_redis(folder)
            cleanup.push_async_callback(redis_proc.stop)
            await wait_redis(redis_proc, redis_url)
            redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
            cleanup.push_async_callback(redis.aclose)
            version = (await redis.info("server"))["redis_version"]
            procs: list[Proc] = []
            env = settings_env(
                {
                    "redis_url": redis_url,
                    "namespace": namespace,
                    "allowed_networks": LOOPBACK,
                    "metrics_port": 0,
                    "host_rate_limit": HOST_RATE_LIMIT,
                    "api_keys": ",".join(f"{name}:{key}" for name, key in keys.items()),
                }
            )
            port = free_port()
            api_argv = vtwatch("--log-level", "warning", "api", "--host", "127.0.0.1")
            api_proc = Proc("api", [*api_argv, "--port", str(port)], folder / "api.log", env)
            cleanup.push_async_callback(api_proc.stop)
            procs.append(api_proc)
            worker = Proc(
                "worker", vtwatch("--log-level", "warning", "worker"), folder / "worker.log", env
            )
            cleanup.push_async_callback(worker.stop)
            procs.append(worker)
            session = await cleanup.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
            )
            api = f"http://127.0.0.1:{port}"
            bench = Bench(cfg, session, api, keys)
            for spec in specs:
                options = ["--seed", str(cfg.seed), "--callback-loss-rate", f"{cfg.loss_rate:g}"]
                (folder / spec.name).mkdir()  # each simulator's log in its own folder
                sim_proc, sim_url = start_simulator(folder / spec.name, *options)
                cleanup.push_async_callback(sim_proc.stop)
                procs.append(sim_proc)
                await wait_http(sim_proc, f"{sim_url}/stats")
                bench.sims[spec.name] = sim_url
            await wait_http(api_proc, f"{api}/healthz")
            try:
                return await run_jobs(
                    cfg, bench, specs, redis, redis_url, namespace, version, procs
                )
            except BaseException:
                for proc in procs:
                    log(f"{proc.name} log ends:\n{proc.tail()}")
                raise
    raise AssertionError("unreachable")


async def run_jobs(
    cfg: CallbacksConfig,
    bench: Bench,
    specs: list[RunSpec],
    redis: aioredis.Redis,
    redis_url: str,
    namespace: str,
    version: str,
    procs: list[Proc],
) -> Report:
    store = Store(redis, namespace=namespace)
    lengths = durations(cfg)
    plans = [
        [Planned(spec, f"job-{k:04d}", duration) for spec in specs]
        for k, duration in enumerate(lengths)
    ]
    began: dict[int, float] = {}
    ended: dict[str, float] = {}
    for phase in sorted({spec.phase for spec in specs}):
        runs = [i for i, spec in enumerate(specs) if spec.phase == phase]
        names = ", ".join(specs[i].name for i in runs)
        log(f"phase {phase} ({names}): starting {cfg.jobs} jobs each over {cfg.spread:g} s")
        began[phase] = time.time()
        await start_all(bench, [[row[i] for i in runs] for row in plans])
        log(f"phase {phase}: all started; waiting for every watch to end")
        phase_specs = [specs[i] for i in runs]
        ended |= await wait_done(store, phase_specs, cfg.jobs, cfg.max_wait + MARGIN, procs)
    report = Report(asdict(cfg), f"private redis-server ({redis_url}), Redis {version}")
    for i, spec in enumerate(specs):
        run_plans = [row[i] for row in plans]
        result = await measure(bench, spec, run_plans)
        result.seconds = round(ended[spec.name] - began[spec.phase], 1)
        created = [p.created_at for p in run_plans]
        result.started_over = round(max(created) - min(created), 3)
        setup_ms = [round(1000 * (p.created_at - p.registered_at), 1) for p in run_plans]
        result.setup_ms_p50, result.setup_ms_max = percentile(setup_ms, 50), max(setup_ms)
        judge(result, spec.judged)
        report.runs.append(result)
    return report


# --- output ----------------------------------------------------------------------------------


def yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_latency(lat: Latencies | None) -> str:
    if lat is None or not lat.count:
        return "-"
    return f"{fmt(lat.p50)} / {fmt(lat.p95)} / {fmt(lat.max)} s (n={lat.count})"


def describe(policy: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {str(v).lower() if isinstance(v, bool) else f'{v:g}'}" for k, v in policy.items()
    )


def format_table(report: Report) -> str:
    cfg = CallbacksConfig(**report.config)
    lines = [
        f"Push callbacks benchmark: {cfg.jobs} jobs log-uniform {cfg.min_duration:g}-"
        f"{cfg.max_duration:g} s (seed {cfg.seed}) per run, started over {cfg.spread:g} s; the "
        f"simulator loses {cfg.loss_rate:.0%} of pushes; one API, one worker, one simulator per "
        "run; phase 1: push, phase 2: the others side by side",
        f"Redis: {report.redis}",
        "",
        "| run | policy | requests/job mean (max) | latency p50 / p95 / max | pushed: p50 / p95 "
        "/ max | lost: p50 / p95 / max | pushes sent / lost / failed | states | ended after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        pushes = (
            " / ".join(str(r.pushes.get(k, 0)) for k in ("sent", "lost", "failed"))
            if r.callback
            else "-"
        )
        states = ", ".join(f"{n} {s}" for s, n in r.by_state.items())
        lines.append(
            f"| {r.name} | {describe(r.policy)} | {r.requests_mean:.2f} ({r.requests_max}) | "
            f"{fmt_latency(r.latency_all)} | {fmt_latency(r.latency_by_push.get('sent'))} | "
            f"{fmt_latency(r.latency_by_push.get('lost'))} | {pushes} | {states} | "
            f"{r.seconds:.0f} s |"
        )
    lines += ["", "| target | value | met? |", "|---|---|---|"]
    for r in report.runs:
        for name, ok in r.met.items():
            lines.append(f"| {r.name}: {name} | {value_of(r, name)} | {yes(ok)} |")
    lines.append("")
    for r in report.runs:
        by_push = ", ".join(f"{k} {v:.2f}" for k, v in r.requests_by_push.items())
        lines.append(
            f"{r.name}: phase {next(s.phase for s in run_specs(cfg) if s.name == r.name)}, jobs "
            f"started over {r.started_over:.1f} s (registration + creation p50 "
            f"{fmt(r.setup_ms_p50, 1)} ms, max {fmt(r.setup_ms_max, 1)} ms); "
            f"requests per job by push: {by_push}; the host answered "
            f"{r.host_requests} ({r.not_yet} x 404: a first poll before its job existed); "
            f"attempts - the host's requests: {r.attempts_mismatched}"
        )
        for row in r.slowest:
            lines.append(
                f"  slowest: {row['job']} ({row['duration']:g} s, push {row['push']}): "
                f"{row['latency']:.3f} s, {row['requests']} requests, {row['state']}"
            )
    return "\n".join(lines)


def value_of(r: RunResult, name: str) -> str:
    if name.startswith("p95"):
        sent = r.latency_by_push.get("sent")
        return f"{fmt(sent.p95 if sent else None, 3)} s"
    if name.startswith("mean requests"):
        return f"{r.requests_mean:.2f}"
    if name == "no timeout":
        return str(r.timeouts)
    return f"{r.by_state.get('completed', 0)} of {r.jobs}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = CallbacksConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--jobs", type=positive_int, default=None, help=f"jobs per run ({d.jobs})")
    add("--min-duration", type=float, default=None, help=f"shortest job, s ({d.min_duration:g})")
    add("--max-duration", type=float, default=None, help=f"longest job, s ({d.max_duration:g})")
    add("--spread", type=float, default=None, help=f"s over which jobs start ({d.spread:g})")
    add("--seed", type=int, default=None, help=f"durations and lost pushes ({d.seed})")
    add("--loss-rate", type=float, default=None, help=f"lost pushes ({d.loss_rate:g})")
    add("--initial-wait", type=float, default=None, help=f"push run's ({d.initial_wait:g} s)")
    add("--max-interval", type=float, default=None, help=f"push runs' ({d.max_interval:g} s)")
    add("--max-wait", type=float, default=None, help=f"max_wait_time ({d.max_wait:g} s)")
    add("--quick", action="store_true", help="20 jobs of 1-3 s, first wait 5 s (a smoke run)")
    add("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> CallbacksConfig:
    base = QUICK if args.quick else CallbacksConfig()
    given = {f.name: getattr(args, f.name) for f in fields(CallbacksConfig)}
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run_benchmark(config_from(args)))
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    return 0 if all(report.met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
