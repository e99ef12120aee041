"""Benchmark: what a tenant-wide read and a promised write cost on one Redis and on a Redis
Cluster, by partition count — the latency table of docs/scale.md ("Redis Cluster"). Real
processes on loopback; one client (this process) makes one call at a time.

What runs, all on 127.0.0.1: a private `redis-server` (`--save "" --appendonly no`) and a
cluster of 3 masters + 3 replicas with AOF everysec (`tests/redis_cluster.py`, as the tests
use), measured once every master's replica is `online` (its first sync ends a moment after
`cluster_state:ok`, and a `WAIT` before then times out). Every call goes through
the service's own code: a client from `service.store.connection.connect` (as the API's), a `Store`,
and for the waited registrations a `Replication` as the API builds it
(`VTW_REDIS_WAIT_REPLICAS`, `VTW_REDIS_WAIT_TIMEOUT`). Each (target, P) has a namespace of its
own, holding one tenant with `--per-partition` pending watches in every partition (registered
through `Store.register`, with Idempotency-Keys chosen to land in each partition), deleted
once measured. Per (target, P), after `--warmup` untimed calls, `--calls` timed ones:

* **tenant counts**: what `GET /v1/status` asks Redis — `Store.counts` (the P count hashes,
  one pipeline) and `HostBook.of_tenant` (the hosts the tenant polled: none here, so one
  `ZREVRANGE`), gathered as the route does; on one Redis at P = 1, on the cluster at each
  `--partitions`;
* **a page of `--page`** (`GET /v1/watches`, no state, no cursor): `Store.page` — P index reads
  in one pipeline, then one `MGET` per partition on the page; on the cluster at each
  `--partitions`. The page holds min(`--page`, P x `--per-partition`) watches: at P = 1 with the
  defaults, 10, not 50 (the table says how many);
* **a registration** (`Store.register`, no Idempotency-Key: a random partition) on the cluster
  at P = `--register-partitions`, `--registrations` without `WAIT` and as many with
  `WAIT 1 <--wait-timeout>`, interleaved one by one (so a busy moment of the shared machine hits
  both alike), for another tenant in the same namespace. Reported besides the latencies: how many
  `WAIT`s got fewer replicas than asked within the timeout
  (`vtwatch_replica_wait_short_total`, answered anyway).

Latencies are wall-clock, per call, from this process (client CPU included): median and p99
(nearest rank). Everything started here is stopped at the end, on an error or Ctrl-C/SIGTERM.

Run from the repository root (about 10 seconds with the defaults, most of it starting the
cluster):

    .venv/bin/python bench/status.py                 # the table
    .venv/bin/python bench/status.py --json          # the same as JSON
    .venv/bin/python bench/status.py --partitions 1,12 --calls 100 --registrations 100
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: let `worker` be the package, not this file
    ROOT = Path(__file__).resolve().parent.parent
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench")]

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from bench._config import log, positive_int, positive_ints
from bench._fixtures import delete_namespace, spec_for
from bench._lateness import percentile
from bench._procs import start_redis, wait_redis
from service.api.schemas import Policy
from service.settings import Settings
from service.store.connection import connect
from service.store.replication import Replication
from service.store.watches import Store
from tests.redis_cluster import LocalCluster, replicas_in_sync, start_cluster

TENANT = "bench-status"  # the tenant read: --per-partition watches in each partition
WRITER = "bench-register"  # the tenant the timed registrations are for
STATUS_URL = "http://127.0.0.1:9/jobs/bench"  # never polled: no worker runs here
POLICY = Policy()
DEADLINE_SECONDS = 86_400.0
SEED_PARALLEL = 32
SYNC_SECONDS = 60.0  # how long the replicas may take to be online after the cluster is ok
WAIT_SHORT = "vtwatch_replica_wait_short_total"


@dataclass(frozen=True, slots=True)
class StatusConfig:
    partitions: tuple[int, ...] = (1, 12, 64)
    calls: int = 300
    warmup: int = 20
    per_partition: int = 10
    page: int = 50
    register_partitions: int = 12
    registrations: int = 500
    wait_replicas: int = 1
    wait_timeout: float = 1.0


@dataclass(slots=True)
class Figure:
    what: str  # "counts", "page", "register", "register+wait"
    target: str  # "one Redis" or "cluster"
    partitions: int
    calls: int
    median_ms: float
    p99_ms: float
    max_ms: float
    items: int | None = None  # a page's watches


@dataclass(slots=True)
class Report:
    config: StatusConfig
    machine: str
    figures: list[Figure] = field(default_factory=list)
    waits: int = 0  # registrations that waited for replicas
    waits_short: int = 0  # of those, how many had fewer replicas than asked in time
    replicas_online_after: float = 0.0  # s from `cluster_state:ok` to every replica online
    seconds: float = 0.0


# --- measuring ------------------------------------------------------------------------------


def figure(what: str, target: str, partitions: int, ms: list[float], **extra: Any) -> Figure:
    ms = sorted(ms)
    return Figure(
        what,
        target,
        partitions,
        len(ms),
        statistics.median(ms),
        percentile(ms, 99) or 0.0,  # (never None: at least one call)
        ms[-1],
        **extra,
    )


async def timed(call: Callable[[], Awaitable[Any]], calls: int, warmup: int) -> list[float]:
    """`warmup` untimed calls, then the milliseconds of `calls` calls, one at a time."""
    for _ in range(warmup):
        await call()
    ms = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        ms.append((time.perf_counter() - started) * 1000)
    return ms


async def seed(store: Store, per_partition: int) -> None:
    """`per_partition` pending watches of TENANT in every partition: Idempotency-Keys picked
    for the partition they hash to, registered through `Store.register`."""
    wanted = {part.number: per_partition for part in store.keys.parts}
    chosen: list[str] = []
    n = 0
    while any(wanted.values()):
        key = f"seed-{n}"
        n += 1
        number = store.keys.of_idempotency(TENANT, key).number
        if wanted[number]:
            wanted[number] -= 1
            chosen.append(key)
    spec = spec_for(STATUS_URL, POLICY)
    pending = iter(chosen)

    async def register_some() -> None:
        for key in pending:
            await store.register(TENANT, spec, DEADLINE_SECONDS, idempotency_key=key)

    await asyncio.gather(*(register_some() for _ in range(SEED_PARALLEL)))
    counted = (await store.counts(TENANT)).get("pending", 0)
    expected = per_partition * store.keys.partitions
    if counted != expected:
        raise RuntimeError(f"seeded {counted} pending watches, expected {expected}")


async def reads(
    report: Report, redis: aioredis.Redis, target: str, p: int, cfg: StatusConfig, page: bool
) -> None:
    """Tenant counts (and, if `page`, a page) at P = `p` in a namespace of its own."""
    store = Store(redis, namespace=f"bench-status-{secrets.token_hex(3)}-p{p}", partitions=p)
    await store.check_partitions()  # as the API at its start (and the slot map is read)
    await seed(store, cfg.per_partition)

    async def status() -> None:  # what GET /v1/status awaits
        await asyncio.gather(store.counts(TENANT), store.hosts.of_tenant(TENANT))

    ms = await timed(status, cfg.calls, cfg.warmup)
    report.figures.append(figure("counts", target, p, ms))
    log(f"{target}, P = {p}: tenant counts, median {report.figures[-1].median_ms:.2f} ms")
    if page:

        async def page_of() -> None:  # what GET /v1/watches awaits
            await store.page(TENANT, None, cfg.page, None)

        items = len((await store.page(TENANT, None, cfg.page, None)).docs)
        ms = await timed(page_of, cfg.calls, cfg.warmup)
        report.figures.append(figure("page", target, p, ms, items=items))
        median = report.figures[-1].median_ms
        log(f"{target}, P = {p}: a page ({items} watches), median {median:.2f} ms")
    await delete_namespace(store)  # (on an error or interrupt, the servers go anyway)


async def registrations(report: Report, redis: aioredis.Redis, cfg: StatusConfig) -> None:
    """Registrations without WAIT and with WAIT, interleaved, at P = register_partitions."""
    p = cfg.register_partitions
    namespace = f"bench-status-{secrets.token_hex(3)}-reg{p}"
    bare = Store(redis, namespace=namespace, partitions=p)
    waited = Store(
        redis,
        namespace=namespace,
        partitions=p,
        replication=Replication(redis, cfg.wait_replicas, int(cfg.wait_timeout * 1000)),
    )
    spec = spec_for(STATUS_URL, POLICY)
    await bare.check_partitions()
    for store in (bare, waited):  # warm-up: connections to every master, scripts loaded
        for _ in range(cfg.warmup):
            await store.register(WRITER, spec, DEADLINE_SECONDS)
    short_before = REGISTRY.get_sample_value(WAIT_SHORT) or 0.0
    bare_ms: list[float] = []
    waited_ms: list[float] = []
    for _ in range(cfg.registrations):
        for store, ms in ((bare, bare_ms), (waited, waited_ms)):
            started = time.perf_counter()
            await store.register(WRITER, spec, DEADLINE_SECONDS)
            ms.append((time.perf_counter() - started) * 1000)
    report.waits = cfg.registrations
    report.waits_short = int((REGISTRY.get_sample_value(WAIT_SHORT) or 0.0) - short_before)
    report.figures.append(figure("register", "cluster", p, bare_ms))
    report.figures.append(figure("register+wait", "cluster", p, waited_ms))
    log(
        f"cluster, P = {p}: registration median {report.figures[-2].median_ms:.2f} ms, "
        f"with WAIT {report.figures[-1].median_ms:.2f} ms ({report.waits_short} short)"
    )
    await delete_namespace(bare)


async def replicas_online(local: LocalCluster) -> float:
    """Until every master has a replica `online` (its first full sync done); the seconds it
    took. `cluster_state:ok` comes first (the tests' cluster syncs at once,
    `repl-diskless-sync-delay 0`, yet after it), and a `WAIT` before then times out."""
    started = time.monotonic()
    while True:
        states = [replicas_in_sync(port) for port in local.masters()]
        if len(states) == 3 and all(states):
            return time.monotonic() - started
        if time.monotonic() - started > SYNC_SECONDS:
            raise RuntimeError(f"the replicas are not online after {SYNC_SECONDS:g} s")
        await asyncio.sleep(0.1)


# --- the run --------------------------------------------------------------------------------


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores, {cpu}, load average {load:.2f} at the start"


async def run_benchmark(cfg: StatusConfig) -> Report:
    """Start one Redis and the cluster, measure, stop them (whatever happens)."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:  # SIGTERM: stop like Ctrl-C, through the `finally`s below
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    report = Report(cfg, machine())
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="vtw-bench-status-"))
    redis_proc, redis_url = start_redis(folder)
    local: LocalCluster | None = None
    failed = False
    try:
        await wait_redis(redis_proc, redis_url)
        one = connect(Settings(redis_url=redis_url, redis_cluster=False))
        try:
            await reads(report, one, "one Redis", 1, cfg, page=False)
        finally:
            await one.aclose()
        await redis_proc.stop()
        log("starting the cluster (3 masters + 3 replicas, AOF everysec)")
        # Synchronous on purpose: a Ctrl-C meanwhile cancels at the next await, once `local`
        # is set, so the `finally` stops what was started.
        local = start_cluster(aof=True, replicas=1)
        report.replicas_online_after = await replicas_online(local)
        log(f"every replica online {report.replicas_online_after:.1f} s after cluster_state:ok")
        many = connect(Settings(redis_url=local.url, redis_cluster=True))
        try:
            await many.initialize()  # the slot map, read once before the first calls
            for p in cfg.partitions:
                await reads(report, many, "cluster", p, cfg, page=True)
            await registrations(report, many, cfg)
        finally:
            await many.aclose()
    except Exception:
        failed = True
        raise
    finally:
        if local is not None:
            local.stop()
            shutil.rmtree(local.root, ignore_errors=True)
        try:
            await redis_proc.stop()  # (stopped already unless the cluster was never reached)
        finally:
            if failed:
                log(f"the single Redis's log is kept in {folder}")
            else:
                shutil.rmtree(folder, ignore_errors=True)
            if task is not None:
                loop.remove_signal_handler(signal.SIGTERM)
    report.seconds = time.monotonic() - started
    return report


# --- output ---------------------------------------------------------------------------------

LABELS = {
    "counts": "tenant counts (GET /v1/status's Redis part)",
    "page": "a page of {page} (GET /v1/watches)",
    "register": "a registration, without WAIT",
    "register+wait": "a registration, with WAIT {replicas}",
}


def format_table(report: Report) -> str:
    cfg = report.config
    lines = [
        f"Status benchmark: one client, one call at a time; a tenant with {cfg.per_partition} "
        f"watches per partition; {cfg.calls} calls per read, {cfg.registrations} registrations "
        f"each way (after {cfg.warmup} untimed); {report.machine}; {report.seconds:.0f} s",
        "one Redis: no replica, no AOF; cluster: 3 masters + 3 replicas, AOF everysec; loopback",
        "",
        "| what | target | P | calls | median ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in report.figures:
        label = LABELS[f.what].format(page=cfg.page, replicas=cfg.wait_replicas)
        if f.items is not None and f.items != cfg.page:
            label += f" ({f.items} watches)"
        lines.append(
            f"| {label} | {f.target} | {f.partitions} | {f.calls} | {f.median_ms:.2f} "
            f"| {f.p99_ms:.2f} | {f.max_ms:.2f} |"
        )
    lines += [
        "",
        f"cluster measured once every replica was online ({report.replicas_online_after:.1f} s "
        "after cluster_state:ok)",
    ]
    if report.waits:
        lines.append(
            f"WAITs short of {cfg.wait_replicas} replica(s) within {cfg.wait_timeout:g} s "
            f"(answered anyway): {report.waits_short} of {report.waits}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = StatusConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--partitions", type=positive_ints, default=d.partitions, help="cluster reads' P (1,12,64)")
    add("--calls", type=positive_int, default=d.calls, help="timed calls per read (%(default)s)")
    add("--warmup", type=int, default=d.warmup, help="untimed calls first (%(default)s)")
    add("--per-partition", type=positive_int, default=d.per_partition, help="tenant's watches")
    add("--page", type=positive_int, default=d.page, help="page size (%(default)s)")
    add("--register-partitions", type=positive_int, default=d.register_partitions, help="P")
    add("--registrations", type=positive_int, default=d.registrations, help="each way")
    add("--wait-replicas", type=positive_int, default=d.wait_replicas, help="WAIT's n")
    add("--wait-timeout", type=float, default=d.wait_timeout, help="WAIT's timeout, s")
    add("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = StatusConfig(**{f.name: getattr(args, f.name) for f in fields(StatusConfig)})
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            print(f"bench/status.py needs {tool} on PATH", file=sys.stderr)
            return 2
    try:
        report = asyncio.run(run_benchmark(cfg))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; everything started was stopped")
        return 130
    print(json.dumps(asdict(report), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
