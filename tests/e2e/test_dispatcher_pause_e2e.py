"""A worker frozen in the middle of a delivery sends nothing once it wakes, if another worker
delivered meanwhile (README: "a POST starts only on a lease confirmed for its whole timeout").

From a chaos soak: a worker SIGSTOPped for 8 s between its lease check and its POST sent, after
SIGCONT, six webhooks another worker had already delivered. The dispatcher checked the lease,
then fetched the signing secret (Redis round trips), then POSTed; it now fetches first and
confirms the lease right before the POST.

Real processes on loopback (`vtwatch api`, two `vtwatch worker`, `vtwatch simulate`) over the
shared Redis in a fresh namespace. Worker A reaches Redis through a proxy in the test process,
which SIGSTOPs A the moment A asks for the tenant's signing secret: a pause in the middle of the
delivery, hit every time rather than by chance. Worker B, started then, takes the lapsed lease
and delivers; then A is woken.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from service.store.keys import Keys

from .faults import Receiver, register_watch, stop_gracefully, webhook_secret
from .helpers import TENANT, Api, Simulator
from .procs import SHARED_REDIS_URL, Processes, free_port, poll_until, service_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(90),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc/<pid>/stat"),
]

ONE_POLL = {"initial_wait_time": 0.05, "jitter": 0.0, "max_wait_time": 60}
# The dispatcher's lease: max(lease, 2 x webhook timeout) = 1 s.
SETTINGS = {
    "lease_seconds": 1,
    "webhook_timeout": 0.5,
    "webhook_retry_schedule": "0.2,0.2",
    "min_poll_interval": 0.05,
    "shutdown_grace_seconds": 10,
}
LEASE_LOST = "vtwatch_lease_lost_total"


def stopped(pid: int) -> bool:
    """True once the process is in the stopped state (`T` in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "T"


class PausingProxy:
    """Forwards one worker's Redis connections; the first command that names `trigger` is held
    until the worker (`pid`, set once it started) is SIGSTOPped, then sent on."""

    def __init__(self, target: tuple[str, int], trigger: bytes) -> None:
        self.target, self.trigger = target, trigger
        self.pid: int | None = None
        self.paused = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> PausingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for task in (
            asyncio.ensure_future(self._pipe(reader, upstream_writer, watch=True)),
            asyncio.ensure_future(self._pipe(upstream_reader, writer, watch=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, watch: bool
    ) -> None:
        tail = b""
        try:
            while chunk := await reader.read(64 * 1024):
                if watch and not self.paused.is_set() and self.trigger in tail + chunk:
                    await self._pause()
                tail = (tail + chunk)[-len(self.trigger) :]
                writer.write(chunk)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _pause(self) -> None:
        assert self.pid is not None, "the worker's pid is not known yet"
        os.kill(self.pid, signal.SIGSTOP)

        async def is_stopped() -> bool:
            return stopped(self.pid) if self.pid is not None else False

        await poll_until(is_stopped, timeout=5, what="the worker to stop", interval=0.001)
        self.paused.set()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def leases_lost(http: httpx.AsyncClient, metrics_url: str) -> float:
    text = (await http.get(metrics_url)).text
    for line in text.splitlines():
        if line.startswith(LEASE_LOST + " "):
            return float(line.split()[1])
    return 0.0


async def test_a_worker_paused_mid_delivery_sends_nothing_after_another_delivered(
    procs: Processes, http: httpx.AsyncClient, namespace: str
) -> None:
    """Worker A is SIGSTOPped as it fetches the signing secret of a webhook it has claimed;
    worker B takes the lapsed lease and delivers (one POST). Woken, A must not POST the webhook
    a second time: it finds its lease gone (`vtwatch_lease_lost_total` 1) and drops the item."""
    redis = urlsplit(SHARED_REDIS_URL)
    proxy = PausingProxy(
        (redis.hostname or "127.0.0.1", redis.port or 6379),
        Keys(namespace).secret(TENANT).encode(),
    )
    await proxy.start()
    receiver = await Receiver().start()
    worker_a = None
    try:
        metrics_port = free_port()
        env = service_env(SHARED_REDIS_URL, namespace, **SETTINGS)
        env_a = service_env(
            f"redis://127.0.0.1:{proxy.port}{redis.path}",
            namespace,
            **SETTINGS,
            metrics_port=metrics_port,
            metrics_host="127.0.0.1",
        )
        _, sim_url = await procs.start_simulator("simulator")
        _, api_url = await procs.start_api(env)
        await webhook_secret(http, api_url)  # the tenant's secret exists before A reads it
        worker_a = procs.start_worker(env_a, "worker-a")
        proxy.pid = worker_a.pid
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        await procs.wait_http(worker_a, metrics_url)
        (job,) = await Simulator(http, sim_url).create_jobs([{"duration": 0.0}])
        watch = await register_watch(
            http, api_url, job["status_url"], ONE_POLL, webhook_url=receiver.hook_url
        )

        async def paused() -> bool:
            return proxy.paused.is_set()

        await poll_until(paused, timeout=20, what="worker A to fetch the secret", interval=0.02)
        assert receiver.arrivals == [], "A POSTed before its pause"
        procs.start_worker(env, "worker-b")
        api = Api(http, api_url)

        async def delivered() -> bool:
            state: str = (await api.get(watch["id"]))["webhook"]["state"]
            return state == "delivered"

        await poll_until(delivered, timeout=20, what="B to deliver", alive=procs.check_alive)
        assert len(receiver.arrivals) == 1
        worker_a.popen.send_signal(signal.SIGCONT)

        async def a_decided() -> bool:
            return len(receiver.arrivals) > 1 or await leases_lost(http, metrics_url) >= 1

        await poll_until(a_decided, timeout=20, what="A to drop the item", alive=procs.check_alive)
        lost = await leases_lost(http, metrics_url)
        worker_a.send(signal.SIGTERM)  # once A has exited, no later POST can come from it
        code = await worker_a.wait_exit(30)
        final = await api.get(watch["id"])
    finally:
        if worker_a is not None and worker_a.running():
            worker_a.popen.send_signal(signal.SIGCONT)
        await stop_gracefully(procs)
        await receiver.aclose()
        await proxy.aclose()

    assert len(receiver.arrivals) == 1, (
        f"{len(receiver.arrivals)} POSTs of one webhook: A sent it again after B delivered"
    )
    assert lost == 1
    assert code == 0, "worker A did not stop cleanly"
    assert final["webhook"] == {"state": "delivered", "attempts": 1, "last_status_code": 204}
    assert {a.webhook_id for a in receiver.arrivals} == {f"msg_{watch['id']}"}
