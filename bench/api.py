"""Benchmark: one API process under load (issue 20 §3) — real processes on loopback.

What runs, all on 127.0.0.1: a private `redis-server` (`--save "" --appendonly no`) and one
`vtwatch api` process (one uvicorn process, the default log level: its access log on, to a file)
with an API key (`VTW_API_KEYS`, so every `/v1/` request is authenticated) and loopback admitted
(`VTW_ALLOWED_NETWORKS`). No worker runs: the watches stay pending. The load generator is this
process: one aiohttp session, `--clients` (64) tasks each making one request after another on a
kept-alive connection, for a fixed window per endpoint.

Measured, each endpoint for `--window` s after `--warmup` s, `--repeats` times, the endpoints
interleaved within a repeat (so a busy moment of the shared machine hits them alike):

* `GET /healthz` (the yardstick: the whole HTTP stack and the middlewares, no route work),
* `POST /v1/watches` (a registration, no Idempotency-Key; `--seed` watches registered first),
* `GET /v1/watches/{id}` (a random one of those),
* `GET /v1/watches?limit=50` (the tenant's newest page),
* `GET /v1/status`.

Reported per endpoint: requests/s, p50 and p99 latency (per request, wall clock, as this
process sees it: nearest rank over the window), the API process's CPU per request, the
ratio of its requests/s to `/healthz`'s in the same repeat, and the ratio of CPU per request
(`/healthz`'s to its: what the requests/s ratio would be with the API process alone on a core
it saturates; on a shared, busy machine the API process often is not given a whole core, and
then the requests/s ratio is squeezed towards 1) — medians over the repeats (p99: the
worst repeat's too). This process's own CPU is reported: when it is near a core, the generator,
not the API, is the limit (then the ratios understate the API).

Targets (issue 20): registration >= 0.5 x `/healthz`, a single GET >= 0.6 x, a page of 50
>= 0.3 x, `/v1/status` reported, p99 <= 50 ms at that load (every endpoint).

`--sse N` (5000 in the issue) then opens N event streams (`GET /v1/watches/{id}/events`, one
connection each) to N new watches and measures the API process's RSS before and with them
open (after a 3 s settle). They are opened `SSE_OPENING` (100) at a time: each open reads its
watch, and 5,000 at once would wait on the API's Redis pool past its timeout (503). Then every
watch is cancelled (`DELETE`, 64 at a time, on connections of their own) and each stream's last
event must be its watch's `state` event, `cancelled`. Bars: RSS growth <= 200 MiB, every
stream sees its end. This process raises its own open-file limit (`RLIMIT_NOFILE`, soft to
the hard limit) for the N sockets; the API process inherits it (uvicorn sets no limit of its
own on connections). `--sse-only` skips the endpoints' windows.

Run from the repository root (about a minute and a half with the defaults):

    .venv/bin/python bench/api.py                 # the table; exit 1 if a target is missed
    .venv/bin/python bench/api.py --json          # the same as JSON
    .venv/bin/python bench/api.py --quick         # 1 repeat, 2 s windows
    .venv/bin/python bench/api.py --sse 5000      # and the event streams
    .venv/bin/python bench/api.py --sse-only --sse 5000
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
import os
import platform
import random
import resource
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from bench._config import log, positive_int
from bench._fixtures import LOOPBACK
from bench._lateness import percentile
from bench._procs import (
    Proc,
    child_env,
    free_port,
    start_redis,
    vtwatch,
    wait_http,
    wait_redis,
)

ROOT_DIR = Path(__file__).resolve().parent.parent
TENANT = "bench-api"
STATUS_URL = "http://127.0.0.1:9/jobs/{}"  # never polled: no worker runs
ENDPOINTS = ("healthz", "register", "get", "page", "status")
TARGETS = {"register": 0.5, "get": 0.6, "page": 0.3}  # x /healthz
P99_BAR_MS = 50.0
SSE_RSS_BAR_MIB = 200.0
SSE_OPENING = 100  # streams being opened at once (each open reads the watch once)


@dataclass(frozen=True)
class ApiConfig:
    clients: int = 64
    window: float = 5.0
    warmup: float = 1.0
    repeats: int = 3
    seed: int = 2000  # watches registered before the windows (the GETs read them)
    page: int = 50
    sse: int = 0  # event streams to open (0: none)
    load: bool = True  # the endpoints' windows (False: only the event streams)
    log_level: str = "info"


@dataclass(slots=True)
class Window:
    endpoint: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    api_cpu_ms: float  # API process CPU per request
    client_cpu: float  # this process's CPU seconds per wall second


@dataclass(slots=True)
class Figure:
    endpoint: str
    rps: float  # medians over the repeats
    ratio: float | None  # req/s to /healthz's in the same repeat
    cpu_ratio: float | None  # /healthz's API CPU per request to this one's, in the same repeat
    p50_ms: float
    p99_ms: float
    p99_worst_ms: float
    api_cpu_ms: float
    client_cpu: float
    errors: int


@dataclass(slots=True)
class Sse:
    streams: int
    rss_before_mib: float
    rss_open_mib: float
    growth_mib: float
    per_stream_kib: float
    saw_end: int
    open_seconds: float
    end_seconds: float


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    machine: str
    windows: list[Window] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    sse: Sse | None = None
    met: dict[str, bool] = field(default_factory=dict)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def body(n: int) -> dict[str, Any]:
    return {"status_url": STATUS_URL.format(n), "metadata": {"video": f"v{n}.mp4", "n": n}}


class Load:
    def __init__(self, session: aiohttp.ClientSession, base: str, ids: list[str]) -> None:
        self.session, self.base, self.ids = session, base, ids
        self.counter = 0

    def request(self, endpoint: str) -> Callable[[], Any]:
        s, base = self.session, self.base
        if endpoint == "healthz":
            return lambda: s.get(f"{base}/healthz")
        if endpoint == "get":
            return lambda: s.get(f"{base}/v1/watches/{random.choice(self.ids)}")
        if endpoint == "page":
            return lambda: s.get(f"{base}/v1/watches?limit=50")
        if endpoint == "status":
            return lambda: s.get(f"{base}/v1/status")

        def register() -> Any:
            self.counter += 1
            return s.post(f"{base}/v1/watches", json=body(self.counter))

        return register

    async def window(
        self, endpoint: str, clients: int, warmup: float, seconds: float, api: Proc
    ) -> Window:
        make = self.request(endpoint)
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = time.monotonic() + warmup + seconds

        async def client() -> None:
            nonlocal errors
            while True:
                started = time.perf_counter()
                if started > stop_at_perf:
                    return
                async with make() as response:
                    await response.read()
                    ok = response.status < 300
                if measuring:
                    latencies.append(time.perf_counter() - started)
                    if not ok:
                        errors += 1

        stop_at_perf = time.perf_counter() + (stop_at - time.monotonic())
        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu0, own0, t0 = api.cpu(), time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        cpu1, own1, t1 = api.cpu(), time.process_time(), time.perf_counter()
        count = len(latencies)
        await asyncio.gather(*tasks)
        elapsed = t1 - t0
        ms = sorted(v * 1000 for v in latencies)
        return Window(
            endpoint=endpoint,
            requests=count,
            errors=errors,
            seconds=elapsed,
            rps=count / elapsed,
            p50_ms=percentile(ms, 50) or 0.0,
            p99_ms=percentile(ms, 99) or 0.0,
            api_cpu_ms=((cpu1 or 0) - (cpu0 or 0)) * 1000 / max(1, count),
            client_cpu=(own1 - own0) / elapsed,
        )


async def seed_watches(session: aiohttp.ClientSession, base: str, count: int) -> list[str]:
    ids: list[str] = []
    numbers = iter(range(10_000_000, 10_000_000 + count))

    async def some() -> None:
        for n in numbers:
            async with session.post(f"{base}/v1/watches", json=body(n)) as response:
                response.raise_for_status()
                ids.append((await response.json())["id"])

    await asyncio.gather(*(some() for _ in range(32)))
    return ids


async def measure_sse(session: aiohttp.ClientSession, base: str, api: Proc, count: int) -> Sse:
    log(f"sse: registering {count} watches")
    ids = await seed_watches(session, base, count)
    await asyncio.sleep(1.0)
    before = rss_mib(api.pid)
    opened = 0
    all_open = asyncio.Event()
    opening = asyncio.Semaphore(SSE_OPENING)

    async def follow(watch_id: str) -> str | None:
        nonlocal opened
        last: str | None = None
        url = f"{base}/v1/watches/{watch_id}/events"
        async with contextlib.AsyncExitStack() as stack:
            async with opening:  # until its answer's headers came
                response = await stack.enter_async_context(
                    session.get(url, timeout=aiohttp.ClientTimeout(total=None))
                )
            response.raise_for_status()
            opened += 1
            if opened == count:
                all_open.set()
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    last = line[6:]
        return last

    log(f"sse: opening {count} streams")
    started = time.monotonic()
    streams = [asyncio.create_task(follow(i)) for i in ids]
    await asyncio.wait_for(all_open.wait(), 120)
    open_seconds = time.monotonic() - started
    await asyncio.sleep(3.0)  # the subscriptions start; the process settles
    with_open = rss_mib(api.pid)
    log(f"sse: RSS {before:.1f} -> {with_open:.1f} MiB; cancelling the watches")
    started = time.monotonic()
    pending = iter(ids)

    # Connections of their own: a stream's, back in the pool once it ended, may be one the
    # server is closing (keep-alive timeout).
    async with aiohttp.ClientSession(headers=session.headers) as cancels:

        async def cancel_some() -> None:
            for watch_id in pending:
                async with cancels.delete(f"{base}/v1/watches/{watch_id}") as response:
                    await response.read()

        await asyncio.gather(*(cancel_some() for _ in range(64)))
    results = await asyncio.wait_for(asyncio.gather(*streams), 120)
    end_seconds = time.monotonic() - started
    saw_end = 0
    for watch_id, data in zip(ids, results, strict=True):
        doc = json.loads(data) if data else {}
        saw_end += doc.get("id") == watch_id and doc.get("state") == "cancelled"
    return Sse(
        streams=count,
        rss_before_mib=round(before, 1),
        rss_open_mib=round(with_open, 1),
        growth_mib=round(with_open - before, 1),
        per_stream_kib=round((with_open - before) * 1024 / count, 2),
        saw_end=saw_end,
        open_seconds=round(open_seconds, 2),
        end_seconds=round(end_seconds, 2),
    )


def summarize(windows: list[Window], repeats: int) -> list[Figure]:
    figures = []
    by_repeat = [windows[i * len(ENDPOINTS) : (i + 1) * len(ENDPOINTS)] for i in range(repeats)]
    for index, endpoint in enumerate(ENDPOINTS):
        mine = [rep[index] for rep in by_repeat]
        ratios = [w.rps / rep[0].rps for w, rep in zip(mine, by_repeat, strict=True)]
        cpu_ratios = [
            rep[0].api_cpu_ms / w.api_cpu_ms for w, rep in zip(mine, by_repeat, strict=True)
        ]
        figures.append(
            Figure(
                endpoint=endpoint,
                rps=round(statistics.median(w.rps for w in mine), 1),
                ratio=None if endpoint == "healthz" else round(statistics.median(ratios), 3),
                cpu_ratio=(
                    None if endpoint == "healthz" else round(statistics.median(cpu_ratios), 3)
                ),
                p50_ms=round(statistics.median(w.p50_ms for w in mine), 2),
                p99_ms=round(statistics.median(w.p99_ms for w in mine), 2),
                p99_worst_ms=round(max(w.p99_ms for w in mine), 2),
                api_cpu_ms=round(statistics.median(w.api_cpu_ms for w in mine), 3),
                client_cpu=round(statistics.median(w.client_cpu for w in mine), 2),
                errors=sum(w.errors for w in mine),
            )
        )
    return figures


def judge(report: Report) -> dict[str, bool]:
    met: dict[str, bool] = {}
    for fig in report.figures:
        if fig.endpoint in TARGETS:
            met[f"{fig.endpoint} >= {TARGETS[fig.endpoint]} x healthz"] = (
                fig.ratio is not None and fig.ratio >= TARGETS[fig.endpoint]
            )
        met[f"{fig.endpoint} p99 <= {P99_BAR_MS:g} ms"] = fig.p99_ms <= P99_BAR_MS
        met[f"{fig.endpoint} no errors"] = fig.errors == 0
    if report.sse is not None:
        met[f"sse RSS growth <= {SSE_RSS_BAR_MIB:g} MiB"] = report.sse.growth_mib <= SSE_RSS_BAR_MIB
        met["sse every stream saw its end"] = report.sse.saw_end == report.sse.streams
    return met


async def run_benchmark(cfg: ApiConfig) -> Report:
    fd_limit = raise_fd_limit()
    report = Report(config=asdict(cfg), machine=f"{platform.machine()}, {os.cpu_count()} cores")
    report.config["fd_limit"] = fd_limit
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="vtw-bench-api-") as tmp:
        folder = Path(tmp)
        redis_proc, redis_url = start_redis(folder)
        api: Proc | None = None
        try:
            await wait_redis(redis_proc, redis_url)
            port = free_port()
            env = child_env(
                {
                    "VTW_REDIS_URL": redis_url,
                    "VTW_API_KEYS": f"{TENANT}:{key}",
                    "VTW_ALLOWED_NETWORKS": LOOPBACK,
                    "PYTHONPATH": str(ROOT_DIR),
                }
            )
            argv = vtwatch("--log-level", cfg.log_level, "api", "--host", "127.0.0.1")
            api = Proc("api", [*argv, "--port", str(port)], folder / "api.log", env)
            base = f"http://127.0.0.1:{port}"
            await wait_http(api, f"{base}/healthz")
            connector = aiohttp.TCPConnector(limit=max(cfg.clients, cfg.sse + 16))
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
                ids = []
                if cfg.load:
                    log(f"seeding {cfg.seed} watches")
                    ids = await seed_watches(session, base, cfg.seed)
                load = Load(session, base, ids)
                for repeat in range(cfg.repeats if cfg.load else 0):
                    for endpoint in ENDPOINTS:
                        w = await load.window(endpoint, cfg.clients, cfg.warmup, cfg.window, api)
                        log(
                            f"repeat {repeat + 1}: {endpoint:8} {w.rps:8.1f} req/s "
                            f"p50 {w.p50_ms:6.2f} ms p99 {w.p99_ms:6.2f} ms "
                            f"api {w.api_cpu_ms:.3f} ms CPU/req, client {w.client_cpu:.2f} CPU"
                        )
                        report.windows.append(w)
                report.figures = summarize(report.windows, cfg.repeats) if cfg.load else []
                if cfg.sse:
                    report.sse = await measure_sse(session, base, api, cfg.sse)
        finally:
            if api is not None:
                await api.stop()
            await redis_proc.stop()
    report.met = judge(report)
    return report


def format_table(report: Report) -> str:
    cfg = report.config
    lines = [
        f"One `vtwatch api` process, {cfg['clients']} clients, {cfg['window']:g} s windows, "
        f"medians of {cfg['repeats']} interleaved repeats ({report.machine})",
        "",
        f"{'endpoint':10} {'req/s':>8} {'x healthz':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'worst p99':>9} {'API CPU/req':>11} {'CPU x':>6} {'client CPU':>10}",
    ]
    for f in report.figures:
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        cpu_ratio = "-" if f.cpu_ratio is None else f"{f.cpu_ratio:.2f}"
        lines.append(
            f"{f.endpoint:10} {f.rps:8.0f} {ratio:>9} {f.p50_ms:7.2f} {f.p99_ms:7.2f} "
            f"{f.p99_worst_ms:9.2f} {f.api_cpu_ms:8.3f} ms {cpu_ratio:>6} {f.client_cpu:10.2f}"
        )
    if report.sse is not None:
        s = report.sse
        lines += [
            "",
            f"SSE: {s.streams} open streams: RSS {s.rss_before_mib} -> {s.rss_open_mib} MiB "
            f"(+{s.growth_mib} MiB, {s.per_stream_kib} KiB a stream); opened in "
            f"{s.open_seconds} s; {s.saw_end}/{s.streams} saw their end "
            f"({s.end_seconds} s after the cancels began)",
        ]
    lines.append("")
    for name, ok in report.met.items():
        lines.append(f"{'met ' if ok else 'MISSED'}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=positive_int, default=ApiConfig.clients)
    parser.add_argument("--window", type=float, default=ApiConfig.window)
    parser.add_argument("--warmup", type=float, default=ApiConfig.warmup)
    parser.add_argument("--repeats", type=positive_int, default=ApiConfig.repeats)
    parser.add_argument("--seed", type=positive_int, default=ApiConfig.seed)
    parser.add_argument("--sse", type=int, default=0, help="event streams to open (0: none)")
    parser.add_argument(
        "--sse-only", action="store_true", help="only the event streams, not the endpoints"
    )
    parser.add_argument("--log-level", default=ApiConfig.log_level)
    parser.add_argument("--quick", action="store_true", help="1 repeat, 2 s windows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = ApiConfig(
        clients=args.clients,
        window=2.0 if args.quick else args.window,
        warmup=0.5 if args.quick else args.warmup,
        repeats=1 if args.quick else args.repeats,
        seed=min(args.seed, 500) if args.quick else args.seed,
        sse=args.sse,
        load=not args.sse_only,
        log_level=args.log_level,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    report = asyncio.run(run_benchmark(cfg))
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    missed = [name for name, ok in report.met.items() if not ok]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
