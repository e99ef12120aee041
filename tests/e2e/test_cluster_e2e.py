"""The service on a real Redis Cluster (3 masters, 3 replicas; `tests/redis_cluster.py`) with
12 partitions: 1,000 watches with webhooks, two workers; and a master SIGKILLed mid-run, its
replica promoted: nothing lost, nothing finished twice, no webhook sent twice to a receiver
that answered 2xx."""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.redis_cluster import LocalCluster
from tests.service_fixtures import cluster_client, delete_namespace

from .helpers import (
    FAST_POLICY,
    Api,
    Planned,
    Simulator,
    register_ahead,
    verify_final,
    wait_all_done,
)
from .procs import Processes, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]
PARTITIONS = 12
WATCHES = 1000


class Receiver:
    """Answers 200 to every webhook and counts them by `webhook-id`."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.ids[request.headers["webhook-id"]] += 1
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", hooks.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield hooks, f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()


@pytest.fixture
async def cluster_redis(cluster: LocalCluster) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    client = cluster_client(cluster.url)
    namespace = "e2e-" + secrets.token_hex(4)
    try:
        yield client, namespace
    finally:
        await delete_namespace(client, namespace)
        await client.aclose()


def plan(count: int, seed: int) -> list[Planned]:
    rng = random.Random(seed)
    policy = {**FAST_POLICY, "initial_wait_time": 0.2, "jitter": 0.1, "max_interval": 1.0}
    planned = []
    for _ in range(count):
        outcome = "error" if rng.random() < 0.25 else "completed"
        job = {"duration": round(rng.uniform(1.0, 4.0), 3), "outcome": outcome, "latency": 0.02}
        planned.append(Planned(job, outcome, policy))
    return planned


async def run(
    cluster: LocalCluster,
    cluster_redis: tuple[aioredis.Redis, str],
    procs: Processes,
    http: httpx.AsyncClient,
    receiver: tuple[Receiver, str],
    *,
    kill_a_master: bool,
) -> None:
    redis, namespace = cluster_redis
    hooks, hook_url = receiver
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    env = service_env(
        cluster.url,
        namespace,
        redis_cluster="true",
        partitions=PARTITIONS,
        lease_seconds=3,
        shutdown_grace_seconds=2,
        webhook_retry_schedule="0.5,0.5,1,1,2,2,4",
    )
    _, sim_url = await procs.start_simulator("simulator", "--seed", str(seed))
    _, api_url = await procs.start_api(env)
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    started = time.monotonic()
    registered = await register_ahead(sim, api, plan(WATCHES, seed), hook_url)
    print(f"registered {WATCHES} in {time.monotonic() - started:.1f}s")
    procs.start_worker(env, "worker-1")
    procs.start_worker(env, "worker-2")

    if kill_a_master:

        async def some_delivered() -> int | None:
            return len(hooks.ids) if len(hooks.ids) >= 100 else None

        await poll_until(some_delivered, timeout=30, what="100 webhooks", alive=procs.check_alive)
        # Not the node the URL names: a process starting now still needs that one to answer.
        victim = next(port for port in cluster.masters() if port != cluster.ports[0])
        cluster.kill(victim)
        killed_at = time.monotonic()
        cluster.wait_promoted()
        promoted_in = time.monotonic() - killed_at

        async def answers() -> bool:  # 503 while the API's client meets the new map
            return (await http.get(f"{api_url}/v1/status")).status_code == 200

        await poll_until(answers, timeout=30, what="the API answering again")
        print(
            f"killed master :{victim} with {len(hooks.ids)} webhooks delivered; replica "
            f"promoted {promoted_in:.1f}s later, API answering after "
            f"{time.monotonic() - killed_at:.1f}s"
        )

    await wait_all_done(api, WATCHES, timeout=60, alive=procs.check_alive)

    async def every_webhook() -> int | None:
        return len(hooks.ids) if len(hooks.ids) >= WATCHES else None

    async def all_recorded() -> dict[str, int] | None:
        webhooks: dict[str, int] = (await api.status())["webhooks"]
        return webhooks if webhooks["delivered"] == WATCHES else None

    await poll_until(every_webhook, timeout=30, what="every webhook", alive=procs.check_alive)
    await poll_until(all_recorded, timeout=30, what="every webhook recorded delivered")
    print(f"all done and delivered {time.monotonic() - started:.1f}s after registering")
    await verify_final(api, registered, redis, namespace, PARTITIONS)
    twice = {i: n for i, n in hooks.ids.items() if n > 1}
    assert not twice, f"{len(twice)} webhooks POSTed more than once, e.g. {list(twice)[:5]}"
    assert set(hooks.ids) == {f"msg_{r.watch_id}" for r in registered}


async def test_1000_watches_with_webhooks_on_a_cluster_with_12_partitions(
    cluster: LocalCluster,
    cluster_redis: tuple[aioredis.Redis, str],
    procs: Processes,
    http: httpx.AsyncClient,
    receiver: tuple[Receiver, str],
) -> None:
    await run(cluster, cluster_redis, procs, http, receiver, kill_a_master=False)


async def test_a_master_killed_mid_run_loses_nothing_and_sends_nothing_twice(
    cluster: LocalCluster,
    cluster_redis: tuple[aioredis.Redis, str],
    procs: Processes,
    http: httpx.AsyncClient,
    receiver: tuple[Receiver, str],
) -> None:
    try:
        await run(cluster, cluster_redis, procs, http, receiver, kill_a_master=True)
    finally:  # the killed node comes back as a replica, for the tests after this one
        for port, proc in cluster.procs.items():
            if proc.poll() is not None:
                cluster.start_node(port)
        cluster.wait_ok()
