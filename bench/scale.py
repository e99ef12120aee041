"""Benchmark: worker processes on one Redis and on a Redis Cluster — polls/s, Redis CPU per poll
on each master, lateness and memory per pending watch (issue 10, item 6). Real processes on
loopback.

Targets: a private `redis-server` (P = 1) and a 3-master cluster (`tests/redis_cluster.py`;
like the single Redis: no replica, no AOF, so the figures compare partitioning, not
replication, whose cost is measured apart: docs/scale.md) at each `--partitions` (12 and 48).
For each target, `--watches` watches are registered through `Store.register` twice, in two
namespaces:

* **memory per pending watch**: `used_memory` (less the transient buffers, summed over the
  masters) before and after registering the paced set (`bench/_memory.py`);
* **saturated** set (every watch due again 50 ms after its poll): for 1, 2 and 4 `vtwatch worker`
  processes (`--workers`), polls/s = the simulator's 200 answers over `--window` s after
  `--warmup` s; **Redis CPU µs per poll** on each master (`INFO cpu`, user + sys, over the
  window, divided by every poll of the window), and the Redis time of its commands
  (`INFO commandstats` usec);
* **paced** set (polled once an hour): its due times are spread (written by this benchmark)
  so the workers are offered 60 % of the saturated rate measured for the same target and worker
  count; **lateness** = `last_polled_at` minus the due time, p50/p99 over the watches due in the
  window (a watch still unpolled counts as late as it is at the end).

The machine's cores are shared by everything (simulator, workers, every Redis node): the table
compares like with like, not absolute capacity.

    .venv/bin/python bench/scale.py                   # the table (about 10 minutes)
    .venv/bin/python bench/scale.py --json
    .venv/bin/python bench/scale.py --watches 5000 --workers 1 --partitions 12 --window 4
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: let `worker` be the package, not this file
    ROOT = Path(__file__).resolve().parent.parent
    if sys.path[0] == str(Path(__file__).resolve().parent):
        sys.path[0] = str(ROOT)

import argparse
import asyncio
import json
import os
import platform
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import aiohttp
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bench._config import Config, log, positive_ints
from bench._fixtures import (
    TENANT,
    Simulator,
    delete_namespace,
    register_all,
    release_leases,
    spec_for,
    worker_env,
)
from bench._memory import used_memory
from bench._procs import Proc, start_redis, start_simulator, vtwatch, wait_http, wait_redis
from bench._redis_stats import TOP_LEVEL_SCRIPTS
from service.api.schemas import Policy
from service.store.watches import Store
from tests.redis_cluster import start_cluster
from tests.service_fixtures import cluster_client

SATURATE = Policy(initial_wait_time=0.05, backoff_factor=1, jitter=0, max_interval=0.05)
PACED = Policy(initial_wait_time=3600, backoff_factor=1, jitter=0, max_interval=3600)
PACED_LOAD = 0.6  # the paced run's offered rate, as a share of the saturated one
PACED_LEAD = 2.0  # seconds from spreading the due times to the first one
CPU_BAR_US = 23.0
HOT_COMMANDS = TOP_LEVEL_SCRIPTS | {"mget"}  # what workers send per claim and save
THROUGHPUT_BAR = 0.9


@dataclass(slots=True)
class Run:
    target: str
    partitions: int
    workers: int
    polls_per_s: float
    redis_cpu_us_per_poll: dict[str, float]  # master -> CPU µs per poll (all polls)
    redis_cmd_us_per_poll: dict[str, float]  # master -> usec of its top-level commands per poll
    lateness_p50_ms: float | None = None
    lateness_p99_ms: float | None = None
    paced_per_s: float | None = None

    @property
    def worst_master_cpu_us(self) -> float:
        return max(self.redis_cpu_us_per_poll.values())


@dataclass(slots=True)
class Target:
    name: str
    partitions: int
    memory_per_watch: float
    runs: list[Run] = field(default_factory=list)


# --- Redis, one or a cluster ------------------------------------------------------------------


async def per_master_info(redis: aioredis.Redis, section: str) -> dict[str, dict[str, Any]]:
    if isinstance(redis, RedisCluster):
        info = await redis.info(section, target_nodes=RedisCluster.PRIMARIES)
        return cast(dict[str, dict[str, Any]], info)
    return {"redis": await redis.info(section)}


async def cpu_and_commands(redis: aioredis.Redis) -> dict[str, tuple[float, float]]:
    """Per master: (CPU seconds, usec of top-level commands) since it started."""
    cpu = await per_master_info(redis, "cpu")
    stats = await per_master_info(redis, "commandstats")
    out = {}
    for node, values in cpu.items():
        seconds = float(values["used_cpu_sys"]) + float(values["used_cpu_user"])
        commands = stats.get(node, {})
        usec = sum(
            int(v["usec"])
            for name, v in commands.items()
            if name.removeprefix("cmdstat_") in HOT_COMMANDS
        )
        out[node] = (seconds, float(usec))
    return out


# --- workers ------------------------------------------------------------------------------------


def start_workers(
    cfg: Config, url: str, namespace: str, partitions: int, cluster: bool, n: int, folder: Path
) -> list[Proc]:
    env = worker_env(cfg, url, namespace)
    env |= {"VTW_PARTITIONS": str(partitions), "VTW_REDIS_CLUSTER": str(cluster).lower()}
    env |= {"VTW_METRICS_PORT": "0"}
    argv = vtwatch("--log-level", "warning", "worker")
    tag = secrets.token_hex(2)
    return [Proc(f"worker-{i}", argv, folder / f"worker-{tag}-{i}.log", env) for i in range(n)]


async def stop_all(procs: list[Proc]) -> None:
    codes = await asyncio.gather(*(proc.stop(grace=20) for proc in procs))
    for proc, code in zip(procs, codes, strict=True):
        if code not in (0, -15):
            log(f"{proc.name} exited with {code}:\n{proc.tail()}")


async def ok_polls(sim: Simulator) -> int:
    return int((await sim.stats())["by_status"].get("200", 0))


async def window_mark(
    sim: Simulator, store: Store
) -> tuple[int, dict[str, tuple[float, float]], float]:
    return await ok_polls(sim), await cpu_and_commands(store.redis), time.monotonic()


async def saturated(
    sim: Simulator, store: Store, cfg: Config, url: str, cluster: bool, n: int, folder: Path
) -> tuple[float, dict[str, float], dict[str, float]]:
    procs = start_workers(cfg, url, store.keys.namespace, store.keys.partitions, cluster, n, folder)
    try:
        start = await ok_polls(sim)
        deadline = time.monotonic() + 30
        while await ok_polls(sim) == start:
            if time.monotonic() > deadline or not all(p.alive() for p in procs):
                raise RuntimeError("the workers made no poll:\n" + procs[0].tail())
            await asyncio.sleep(0.05)
        await asyncio.sleep(cfg.warmup)
        a_polls, a_redis, a_at = await window_mark(sim, store)
        await asyncio.sleep(cfg.window)
        b_polls, b_redis, b_at = await window_mark(sim, store)
    finally:
        await stop_all(procs)
        await release_leases(store)
    polls = b_polls - a_polls
    cpu = {node: (b_redis[node][0] - a_redis[node][0]) * 1e6 / polls for node in b_redis}
    cmd = {node: (b_redis[node][1] - a_redis[node][1]) / polls for node in b_redis}
    return polls / (b_at - a_at), cpu, cmd


async def paced(
    sim: Simulator,
    store: Store,
    ids: list[str],
    rate: float,
    cfg: Config,
    url: str,
    cluster: bool,
    n: int,
    folder: Path,
) -> tuple[float, float, float]:
    """Spread the watches' due times at `rate` per second from a little ahead; run `n` workers
    for the warm-up and the window; the lateness p50 and p99 (ms) of those due by the end."""
    now = await store.server_time_ms()
    first = now + int(PACED_LEAD * 1000)
    step_ms = 1000 / rate
    due = {watch_id: first + int(i * step_ms) for i, watch_id in enumerate(ids)}
    async with store.redis.pipeline(transaction=False) as pipe:
        for watch_id, at in due.items():
            pipe.zadd(store.keys.of(watch_id).schedule, {watch_id: at}, xx=True)
        await pipe.execute()
    procs = start_workers(cfg, url, store.keys.namespace, store.keys.partitions, cluster, n, folder)
    try:
        await asyncio.sleep(PACED_LEAD + cfg.warmup + cfg.window)
    finally:
        end = await store.server_time_ms()
        await stop_all(procs)
    measured_from = first + int(cfg.warmup * 1000)
    window = [i for i, at in due.items() if measured_from <= at <= end - 1000]
    late = []
    for start in range(0, len(window), 2000):
        chunk = window[start : start + 2000]
        for doc in await store.get_many(TENANT, chunk):
            polled = doc["last_polled_at"]
            if polled is not None and polled >= first:
                late.append(polled - due[doc["id"]])
            else:
                late.append(end - due[doc["id"]])
    late.sort()
    p50 = late[len(late) // 2] if late else float("nan")
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan")
    return p50, p99, len(window) / (cfg.window - 1.0)


# --- one target ----------------------------------------------------------------------------------


async def measure_target(
    name: str,
    redis: aioredis.Redis,
    url: str,
    partitions: int,
    sim: Simulator,
    urls: list[str],
    cfg: Config,
    workers: Sequence[int],
    folder: Path,
) -> Target:
    cluster = isinstance(redis, RedisCluster)
    hot = Store(redis, namespace=f"scale-s-{secrets.token_hex(3)}", partitions=partitions)
    calm = Store(redis, namespace=f"scale-p-{secrets.token_hex(3)}", partitions=partitions)
    try:
        base = spec_for(urls[0], PACED)
        before = await used_memory(redis)
        await register_all(calm, ({**base, "status_url": u} for u in urls))
        memory = (await used_memory(redis) - before) / len(urls)
        log(f"{name}: {memory:.0f} B per pending watch")
        calm_ids = [d["id"] for d in await all_docs(calm)]
        base = spec_for(urls[0], SATURATE)
        await register_all(hot, ({**base, "status_url": u} for u in urls))
        target = Target(name, partitions, memory)
        for n in workers:
            rate, cpu, cmd = await saturated(sim, hot, cfg, url, cluster, n, folder)
            run = Run(name, partitions, n, rate, cpu, cmd)
            log(f"{name}, {n} workers: {rate:,.0f} polls/s, {run.worst_master_cpu_us:.1f} us/poll")
            run.lateness_p50_ms, run.lateness_p99_ms, run.paced_per_s = await paced(
                sim, calm, calm_ids, rate * PACED_LOAD, cfg, url, cluster, n, folder
            )
            log(f"  paced at {run.paced_per_s:,.0f}/s: lateness p99 {run.lateness_p99_ms:.0f} ms")
            target.runs.append(run)
        return target
    finally:
        for store in (hot, calm):
            await delete_namespace(store)


async def all_docs(store: Store) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await store.page(TENANT, None, 1000, cursor)
        docs += cast(list[dict[str, Any]], page.docs)
        if page.next_cursor is None:
            return docs
        cursor = page.next_cursor


async def main(args: argparse.Namespace) -> list[Target]:
    cfg = Config(watches=args.watches, warmup=args.warmup, window=args.window)
    folder = Path(tempfile.mkdtemp(prefix="vtw-bench-scale-"))
    log(f"logs in {folder}")
    sim_proc, sim_url = start_simulator(folder)
    redis_proc, redis_url = start_redis(folder)
    local = None
    targets: list[Target] = []
    try:
        await wait_http(sim_proc, f"{sim_url}/stats")
        await wait_redis(redis_proc, redis_url)
        async with aiohttp.ClientSession() as session:
            sim = Simulator(sim_proc, sim_url, session)
            urls = await sim.create_jobs(cfg.watches)
            one = aioredis.Redis.from_url(redis_url, decode_responses=True)
            try:
                targets.append(
                    await measure_target(
                        "one Redis", one, redis_url, 1, sim, urls, cfg, args.workers, folder
                    )
                )
            finally:
                await one.aclose()
            local = start_cluster(aof=False, replicas=0)
            many = cluster_client(local.url)
            try:
                for p in args.partitions:
                    targets.append(
                        await measure_target(
                            "cluster", many, local.url, p, sim, urls, cfg, args.workers, folder
                        )
                    )
            finally:
                await many.aclose()
    finally:
        if local is not None:
            local.stop()
        await sim_proc.stop()
        await redis_proc.stop()
    return targets


def format_table(targets: list[Target], args: argparse.Namespace) -> str:
    one = {r.workers: r.polls_per_s for r in targets[0].runs} if targets else {}
    lines = [
        f"Scale benchmark: {args.watches:,} watches per set, window {args.window:g} s after "
        f"{args.warmup:g} s; {os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "Redis CPU us/poll: each master's CPU time over the window / every poll of the window "
        "(worst master; [all masters])",
        "",
        "target     P   workers  polls/s  vs one  CPU us/poll (worst) [all]  cmd us/poll  "
        "late p50/p99 ms  B/watch",
    ]
    for t in targets:
        for r in t.runs:
            ratio = r.polls_per_s / one[r.workers] if one.get(r.workers) else float("nan")
            total = sum(r.redis_cpu_us_per_poll.values())
            cmd = max(r.redis_cmd_us_per_poll.values())
            lines.append(
                f"{t.name:<10} {t.partitions:>2}  {r.workers:>7}  {r.polls_per_s:>7,.0f}  "
                f"{ratio:>6.2f}  {r.worst_master_cpu_us:>19.1f} [{total:>5.1f}]  {cmd:>11.1f}  "
                f"{r.lateness_p50_ms:>6.0f}/{r.lateness_p99_ms:<7.0f}  {t.memory_per_watch:>7.0f}"
            )
    cluster_runs = [(r, one.get(r.workers)) for t in targets[1:] for r in t.runs]
    worst_ratio = min((r.polls_per_s / base for r, base in cluster_runs if base), default=None)
    worst_cpu = max((r.worst_master_cpu_us for t in targets for r in t.runs), default=None)
    if worst_ratio is not None:
        verdict = "meets" if worst_ratio >= THROUGHPUT_BAR else "BELOW"
        lines.append(f"cluster / one Redis, worst: {worst_ratio:.2f} ({verdict} {THROUGHPUT_BAR})")
    if worst_cpu is not None:
        verdict = "meets" if worst_cpu <= CPU_BAR_US else "ABOVE"
        lines.append(
            f"Redis CPU per poll, worst master: {worst_cpu:.1f} us ({verdict} {CPU_BAR_US:g})"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    parser.add_argument("--watches", type=int, default=50_000)
    parser.add_argument("--workers", type=positive_ints, default=(1, 2, 4))
    parser.add_argument("--partitions", type=positive_ints, default=(12, 48))
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    results = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps([asdict(t) for t in results], indent=2))
    else:
        print(format_table(results, arguments))
