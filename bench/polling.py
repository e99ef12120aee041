"""Benchmark: how polling strategies trade requests for detection latency, on virtual time.

Drives the real `VideoTranslationClient` (and, as the baseline, a reimplementation of the
public original algorithm) against an in-process fake upstream, with no real waiting. Every
job gets its own virtual clock: it starts at 0, the client's injected `sleep(s)` adds `s`, and
each request adds `--request-time`. The fake answers from the job's state at the moment the
request *arrives* (before the request time is added), so a poll that arrives at or after the
job's duration sees `completed`, and the client holds the answer `--request-time` later.

Jobs: `--jobs` durations, log-uniform on 1-55 s (`exp(uniform(ln 1, ln 55))`, one
`random.Random(seed)`), every one completing successfully at its duration, all before the
deadline (`--deadline`, the clients' `max_wait_time`). Strategies, on the same jobs:

* `ours (defaults)`: `VideoTranslationClient(base_url)` with every default;
* `original`: poll now, then sleep 1 s x 2^n +/- 0.5 s (no cap); elapsed counts sleeps only
  (not request time); `timeout` when the next sleep would pass the deadline or after 10 polls;
* `fixed 1 s`: our client, 1 s between polls, no jitter, no attempt limit;
* `ours + eta hints (+/-10 %)`: our client with defaults; pending bodies carry `progress` and
  `eta_seconds` = remaining x (1 + uniform(-0.1, 0.1)).

With `--mix lognormal|bimodal|loguniform` the durations come from that `DurationMix` (the
simulator's: lognormal median 30 s, sigma 0.6; bimodal 70 % of that and 30 % median 180 s;
log-uniform 1-55 s; deadline 600, 600 and 60 s unless `--deadline`) and the rows are
`ours (defaults)`, `ours (learned)`, `original` and `fixed 1 s`. Both `ours` rows run with
`max_attempts=None` (with the default 10, every job longer than ~55 s would wait for the poll
kept for the deadline); `ours (learned)` shares one `ScheduleHistory`, trained first on
`--train-jobs` separate jobs of the same mix (their own seed) and still learning while measured.
`--max-interval` sets both `ours` rows' cap (the client's default, 10 s, unless given).

Jitter RNGs are seeded per job (`Random(seed * 1_000_003 + index)`, the same for every
strategy); the ETA error has its own per-job RNG.

Measured per strategy: mean requests per job; detection latency (virtual time at which the
strategy returned `completed` minus the job's duration), p50 and p95 over the detected jobs;
false-timeout rate (share of the jobs shorter than the deadline reported as anything but
`completed`); deadline overshoot
(max and p95 over all jobs of max(0, return time - deadline)); wall-clock seconds to simulate.
Percentiles are nearest-rank.

Run from the repository root:

    python bench/polling.py                 # the table
    python bench/polling.py --json          # the same as JSON
    python bench/polling.py --jobs 2000 --seed 1 --request-time 0.1 --deadline 60
    python bench/polling.py --mix lognormal  # learned schedules against the defaults
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, cast

import aiohttp

from client import ScheduleHistory, VideoTranslationClient
from client.backoff import MAX_INTERVAL
from client.workload import MIXES, DurationMix

BASE_URL = "http://upstream.invalid"
MIN_DURATION = 1.0
MAX_DURATION = 55.0
ETA_ERROR = 0.1
ORIGINAL_MAX_ATTEMPTS = 10
ETA_SEED_OFFSET = 10**12
TRAIN_SEED_OFFSET = 10**6
MIX_DEADLINES = {"lognormal": 600.0, "bimodal": 600.0, "loguniform": 60.0}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    jobs: int = 20_000
    seed: int = 0
    request_time: float = 0.05
    deadline: float = 60.0
    mix: str | None = None
    train_jobs: int = 1_000
    max_interval: float = MAX_INTERVAL

    @property
    def durations(self) -> DurationMix:
        return DurationMix(self.mix or "loguniform", low=MIN_DURATION, high=MAX_DURATION)


@dataclass(frozen=True, slots=True)
class Job:
    index: int
    duration: float


# --- the virtual clock and the fake upstream --------------------------------------------------


class JobClock:
    """One job's virtual clock: starts at 0, moves only by sleeps and request time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class FakeBody:
    """`response.content`: hands out the JSON body like aiohttp's StreamReader.read(n)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        chunk = self._data if n < 0 else self._data[:n]
        self._data = self._data[len(chunk) :]
        return chunk


class FakeResponse:
    """What `session.get()` returns: an async context manager with status, headers, content."""

    def __init__(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status = 200
        self.headers: dict[str, str] = headers or {}
        data = json.dumps(body).encode()
        self.content = FakeBody(data)
        self.content_length = len(data)

    async def read(self) -> bytes:
        return await self.content.read()

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class FakeUpstream:
    """A duck-typed `aiohttp.ClientSession` for one job that completes at `duration`.

    Each `get()` answers from the job's state when the request arrives, then advances the
    job's clock by `request_time`. With `eta_rng`, pending bodies carry `progress` and an
    `eta_seconds` off by up to +/-ETA_ERROR of the time remaining.
    """

    def __init__(
        self,
        clock: JobClock,
        duration: float,
        request_time: float,
        eta_rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.duration = duration
        self.request_time = request_time
        self.eta_rng = eta_rng
        self.requests = 0

    def get(
        self, url: str, headers: object = None, timeout: object = None, allow_redirects: bool = True
    ) -> FakeResponse:
        arrival = self.clock.now
        self.requests += 1
        self.clock.now += self.request_time
        return FakeResponse(self._body(arrival))

    def _body(self, arrival: float) -> dict[str, Any]:
        if arrival >= self.duration:
            return {"result": "completed"}
        body: dict[str, Any] = {"result": "pending"}
        if self.eta_rng is not None:
            remaining = self.duration - arrival
            body["progress"] = 100.0 * arrival / self.duration
            body["eta_seconds"] = remaining * (1 + self.eta_rng.uniform(-ETA_ERROR, ETA_ERROR))
        return body


# --- strategies ------------------------------------------------------------------------------

Runner = Callable[[FakeUpstream, random.Random, float], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Strategy:
    name: str
    run: Runner
    eta_hints: bool = False


def ours(**client_kwargs: Any) -> Runner:
    """A runner polling with the real `VideoTranslationClient` (given keyword arguments)."""

    async def run(upstream: FakeUpstream, rng: random.Random, deadline: float) -> str:
        client = VideoTranslationClient(
            BASE_URL,
            max_wait_time=deadline,
            session=cast(aiohttp.ClientSession, upstream),
            clock=upstream.clock,
            sleep=upstream.clock.sleep,
            rng=rng,
            **client_kwargs,
        )
        return str(await client.get_status())

    return run


async def original_status(upstream: FakeUpstream) -> str:
    """One request of the original: read the body, return its `result`."""
    async with upstream.get(BASE_URL + "/status") as response:
        data = await response.content.read()
    return str(json.loads(data).get("result", "pending"))


async def original(upstream: FakeUpstream, rng: random.Random, deadline: float) -> str:
    """The public original algorithm (the baseline), not using our client.

    Poll now; then sleep 1 s x 2^n +/- 0.5 s (no cap). Elapsed is the sum of the sleeps only.
    Before sleeping, give up (`timeout`) if elapsed + that sleep would pass the deadline; give
    up after ORIGINAL_MAX_ATTEMPTS polls.
    """
    elapsed = 0.0
    for attempt in range(ORIGINAL_MAX_ATTEMPTS):
        status = await original_status(upstream)
        if status in ("completed", "error"):
            return status
        if attempt == ORIGINAL_MAX_ATTEMPTS - 1:
            break
        delay = max(0.0, 1.0 * 2.0**attempt + rng.uniform(-0.5, 0.5))
        if elapsed + delay > deadline:
            break
        await upstream.clock.sleep(delay)
        elapsed += delay
    return "timeout"


FIXED_1S = Strategy(
    "fixed 1 s", ours(initial_wait_time=1.0, backoff_factor=1.0, jitter=0.0, max_attempts=None)
)
STRATEGIES: tuple[Strategy, ...] = (
    Strategy("ours (defaults)", ours()),
    Strategy("original", original),
    FIXED_1S,
    Strategy("ours + eta hints (±10 %)", ours(), eta_hints=True),
)


def mix_strategies(history: ScheduleHistory, max_interval: float) -> tuple[Strategy, ...]:
    """The rows of a `--mix` run; `ours (learned)` learns into (and from) `history`."""
    bounds: dict[str, Any] = {"max_attempts": None, "max_interval": max_interval}
    return (
        Strategy("ours (defaults)", ours(**bounds)),
        Strategy("ours (learned)", ours(**bounds, history=history)),
        Strategy("original", original),
        FIXED_1S,
    )


# --- simulation and metrics ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    requests: int
    returned_at: float


@dataclass(frozen=True, slots=True)
class StrategyResult:
    strategy: str
    jobs: int
    seed: int
    request_time: float
    deadline: float
    mean_requests: float
    detected: int
    latency_p50: float | None
    latency_p95: float | None
    false_timeout_rate: float
    overshoot_max: float
    overshoot_p95: float
    wall_seconds: float
    statuses: dict[str, int] = field(default_factory=dict)


def make_jobs(count: int, seed: int, durations: DurationMix | None = None) -> list[Job]:
    """Durations from the mix (log-uniform on [MIN_DURATION, MAX_DURATION] unless given),
    from one `Random(seed)`."""
    rng = random.Random(seed)
    durations = durations or DurationMix("loguniform", low=MIN_DURATION, high=MAX_DURATION)
    return [Job(i, durations.sample(rng)) for i in range(count)]


def jitter_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def eta_rng(seed: int, index: int) -> random.Random:
    return random.Random(ETA_SEED_OFFSET + seed * 1_000_003 + index)


async def simulate_job(strategy: Strategy, job: Job, config: BenchConfig) -> Outcome:
    clock = JobClock()
    hints = eta_rng(config.seed, job.index) if strategy.eta_hints else None
    upstream = FakeUpstream(clock, job.duration, config.request_time, hints)
    status = await strategy.run(upstream, jitter_rng(config.seed, job.index), config.deadline)
    return Outcome(status, upstream.requests, clock.now)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(
    strategy: Strategy,
    jobs: Sequence[Job],
    outcomes: Sequence[Outcome],
    config: BenchConfig,
    wall: float,
) -> StrategyResult:
    pairs = list(zip(jobs, outcomes, strict=True))
    latencies = [o.returned_at - j.duration for j, o in pairs if o.status == "completed"]
    in_time = [o for j, o in pairs if j.duration < config.deadline]
    missed = sum(o.status != "completed" for o in in_time)
    overshoots = [max(0.0, o.returned_at - config.deadline) for o in outcomes]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    count = max(1, len(outcomes))
    return StrategyResult(
        strategy=strategy.name,
        jobs=len(outcomes),
        seed=config.seed,
        request_time=config.request_time,
        deadline=config.deadline,
        mean_requests=sum(o.requests for o in outcomes) / count,
        detected=len(latencies),
        latency_p50=percentile(latencies, 50),
        latency_p95=percentile(latencies, 95),
        false_timeout_rate=missed / max(1, len(in_time)),
        overshoot_max=max(overshoots, default=0.0),
        overshoot_p95=percentile(overshoots, 95) or 0.0,
        wall_seconds=wall,
        statuses=dict(sorted(statuses.items())),
    )


async def simulate(
    strategies: Sequence[Strategy], jobs: Sequence[Job], config: BenchConfig
) -> list[StrategyResult]:
    """Run every strategy over every job, one job at a time (nothing ever really waits)."""
    results = []
    for strategy in strategies:
        started = time.perf_counter()
        outcomes = [await simulate_job(strategy, job, config) for job in jobs]
        wall = time.perf_counter() - started
        results.append(summarize(strategy, jobs, outcomes, config, wall))
    return results


async def train(strategy: Strategy, config: BenchConfig) -> None:
    """Run `strategy` over `config.train_jobs` jobs of the mix, drawn apart from the measured."""
    jobs = make_jobs(config.train_jobs, config.seed + TRAIN_SEED_OFFSET, config.durations)
    for job in jobs:
        await simulate_job(strategy, job, config)


def run_benchmark(
    config: BenchConfig | None = None, strategies: Sequence[Strategy] | None = None
) -> list[StrategyResult]:
    """The benchmark as a function: one result per strategy, on the same jobs. With a mix and
    no `strategies`, the mix rows, `ours (learned)` warmed up first."""
    config = config or BenchConfig()
    jobs = make_jobs(config.jobs, config.seed, config.durations)
    if strategies is None and config.mix is not None:
        strategies = mix_strategies(ScheduleHistory(), config.max_interval)
        learned = next(s for s in strategies if s.name == "ours (learned)")
        asyncio.run(train(learned, config))
    return asyncio.run(simulate(strategies or STRATEGIES, jobs, config))


# --- output ----------------------------------------------------------------------------------

COLUMNS = (
    "strategy",
    "req/job",
    "p50 lat s",
    "p95 lat s",
    "false t/o",
    "over max s",
    "over p95 s",
    "wall s",
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table_row(r: StrategyResult) -> tuple[str, ...]:
    return (
        r.strategy,
        f"{r.mean_requests:.2f}",
        _seconds(r.latency_p50),
        _seconds(r.latency_p95),
        f"{100 * r.false_timeout_rate:.2f} %",
        _seconds(r.overshoot_max),
        _seconds(r.overshoot_p95),
        f"{r.wall_seconds:.2f}",
    )


def format_table(results: Sequence[StrategyResult], config: BenchConfig) -> str:
    rows = [COLUMNS, *(table_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    warm = f", learned warmed on {config.train_jobs} jobs" if config.mix else ""
    cap = f", max_interval {config.max_interval:g} s" if config.mix else ""
    lines = [
        f"{config.jobs} jobs, durations {config.durations.describe()}, "
        f"deadline {config.deadline:g} s, {1000 * config.request_time:g} ms/request, "
        f"seed {config.seed}{cap}{warm}",
        "",
    ]
    for row in rows:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20_000, help="number of jobs (20000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for durations and RNGs (0)")
    parser.add_argument(
        "--request-time", type=float, default=0.05, help="seconds per request (0.05)"
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="max_wait_time, s (60; a mix: its own)"
    )
    parser.add_argument("--mix", choices=MIXES, default=None, help="durations and learned rows")
    parser.add_argument(
        "--train-jobs", type=int, default=1_000, help="jobs that warm the learned row (1000)"
    )
    parser.add_argument(
        "--max-interval", type=float, default=MAX_INTERVAL, help="cap of the ours rows, s (10)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    deadline = args.deadline or MIX_DEADLINES.get(args.mix, 60.0)
    config = BenchConfig(
        args.jobs,
        args.seed,
        args.request_time,
        deadline,
        args.mix,
        args.train_jobs,
        args.max_interval,
    )
    results = run_benchmark(config)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(format_table(results, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
