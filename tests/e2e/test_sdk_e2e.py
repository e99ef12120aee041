"""The service SDK (`client.WatchServiceClient`) and `vtwatch follow` against real processes
(issue 9, items 4 and 5)."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import httpx
import pytest

from client import ServiceAPIError, Upstream, Watch, WatchServiceClient
from client.simulator import result_url
from client.terminal.follow import EXIT_CODES, UNREACHABLE
from service.sealing import generate_key
from tests.test_cli import run_in_a_terminal

from .helpers import FAST_POLICY, Simulator
from .procs import SHARED_REDIS_URL, Processes, free_port, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VTWATCH = [sys.executable, "-c", "from worker.cli import main; main()"]


async def jobs(sim: Simulator, count: int, duration: float) -> list[str]:
    created = await sim.create_jobs([{"duration": duration, "outcome": "completed"}] * count)
    return [job["status_url"] for job in created]


async def test_the_sdk_drives_the_whole_api(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace)
    _, sim_url = await procs.start_simulator("simulator", "--seed", "11")
    _, api_url = await procs.start_api(env)
    procs.start_worker(env)
    sim = Simulator(http, sim_url)
    (quick,) = await jobs(sim, 1, 1.0)
    more = await jobs(sim, 4, 3600.0)  # still pending when cancelled, however slow the run
    async with WatchServiceClient(api_url) as service:
        watch = await service.register(quick, policy=FAST_POLICY, metadata={"video": "a.mp4"})
        assert isinstance(watch, Watch) and watch.state == "pending"
        assert watch.metadata == {"video": "a.mp4"}
        again = await service.register(quick, policy=FAST_POLICY, idempotency_key="k1")
        same = await service.register(quick, policy=FAST_POLICY, idempotency_key="k1")
        assert same.id == again.id

        events = [event async for event in service.events(watch.id)]
        assert events[0].name == "state" and events[-1].watch.state == "completed"
        assert (await service.get(watch.id)).state == "completed"

        others = [await service.register(url, policy=FAST_POLICY) for url in more]
        cancelled = await service.cancel(others[0].id)
        assert cancelled.state == "cancelled"
        listed = [w.id async for w in service.list(page_size=2)]
        assert len(listed) == 6 and len(set(listed)) == 6 and others[-1].id == listed[0]
        assert [w.id async for w in service.list(state="cancelled")] == [cancelled.id]
        summary = await service.status()
        assert summary.total == 6 and summary.by_state["cancelled"] == 1
        (host,) = summary.hosts  # the simulator's, as the fleet's budget sees it
        assert host.host == "127.0.0.1" and host.breaker == "closed" and host.budget > 0

        with pytest.raises(ServiceAPIError) as missing:
            await service.get("w_000000000000nosuchwatch")
        assert missing.value.status == 404 and "not found" in missing.value.detail
        with pytest.raises(ServiceAPIError) as conflict:
            await service.retry_webhook(watch.id)
        assert conflict.value.status == 409 and "webhook_url" in conflict.value.detail


async def test_the_sdk_registers_another_job_api_with_its_key_and_a_callback(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, secret_keys=generate_key())
    _, sim_url = await procs.start_simulator("simulator", "--require-header", "X-Api-Key: k3y")
    _, api_url = await procs.start_api(env)
    procs.start_worker(env)
    (job,) = await Simulator(http, sim_url).create_jobs(
        [{"duration": 0.5, "outcome": "completed", "shape": "azure-lro"}]
    )
    upstream = Upstream(preset="azure-lro", headers={"X-Api-Key": "k3y"})
    slow = {**FAST_POLICY, "initial_wait_time": 600, "max_interval": 600}  # only a push ends it
    async with WatchServiceClient(api_url) as service:
        watch = await service.register(
            job["status_url"], policy=slow, upstream=upstream, callback=True
        )
        assert watch.upstream is not None and watch.upstream["headers"] == {"X-Api-Key": "***"}
        assert watch.callback_url and watch.callback_url.startswith(f"{api_url}/v1/callbacks/")
        await asyncio.sleep(0.6)  # the job has ended; the watch would wait ten minutes
        assert (await http.post(watch.callback_url)).status_code == 202
        events = [event async for event in service.events(watch.id)]
        done = events[-1].watch
        assert done.state == "completed" and done.result == {"url": result_url(job["id"])}


async def test_events_resume_by_themselves_across_an_api_restart(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, shutdown_grace_seconds=1)
    port = free_port()
    _, sim_url = await procs.start_simulator("simulator", "--seed", "12")
    first, api_url = await procs.start_api(env, "api-1", port)
    procs.start_worker(env)
    (url,) = await jobs(Simulator(http, sim_url), 1, 6.0)
    seen: list[Any] = []
    async with WatchServiceClient(api_url) as service:
        watch = await service.register(url, policy={**FAST_POLICY, "max_interval": 1.0})

        polled = asyncio.Event()

        async def collect() -> None:
            async for event in service.events(watch.id):
                seen.append(event)
                if event.name == "poll":
                    polled.set()

        following = asyncio.create_task(collect())
        await asyncio.wait_for(polled.wait(), 10)
        first.send(signal.SIGTERM)  # drops the stream
        await first.wait_exit(10)
        await procs.start_api(env, "api-2", port)
        await asyncio.wait_for(following, 30)

    assert seen[-1].name == "state" and seen[-1].watch.state == "completed"
    ids = [tuple(map(int, event.id.split("-"))) for event in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # nothing twice, nothing backwards


async def run_follow(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *VTWATCH, "follow", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_vtwatch_follow_prints_each_event_and_exits_by_the_end_state(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace)
    _, sim_url = await procs.start_simulator("simulator", "--seed", "13")
    _, api_url = await procs.start_api(env)
    procs.start_worker(env)
    quick, slow = await jobs(Simulator(http, sim_url), 2, 1.0)
    async with WatchServiceClient(api_url) as service:
        done = await service.register(quick, policy=FAST_POLICY)
        stopped = await service.register(slow, policy={**FAST_POLICY, "max_wait_time": 600})
        await service.cancel(stopped.id)
    cli_env = {**env, "VTW_API_URL": api_url}

    completed = await run_follow(done.id, env=cli_env)
    cancelled = await run_follow("--api", api_url, stopped.id, env=env)
    unknown = await run_follow("w_000000000000nosuchwatch", env=cli_env)
    unreachable = await run_follow("--api", f"http://127.0.0.1:{free_port()}", done.id, env=env)
    on_a_terminal = await asyncio.to_thread(run_in_a_terminal, "follow", "--api", api_url, done.id)

    assert completed[0] == EXIT_CODES["completed"] == 0, completed[1]
    lines = completed[1].splitlines()
    assert lines[0] == f"following {done.id}" and lines[1].startswith("pending: attempt ")
    assert lines[-1].startswith("completed: attempt") and "\x1b[" not in completed[1]
    assert cancelled[0] == EXIT_CODES["cancelled"] and "cancelled: attempt" in cancelled[1]
    assert unknown[0] == UNREACHABLE and "404" in unknown[1]
    assert unreachable[0] == UNREACHABLE
    assert on_a_terminal[0] == 0 and "\x1b[" in on_a_terminal[1] and "completed" in on_a_terminal[1]
