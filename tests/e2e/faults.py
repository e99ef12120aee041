"""Instruments of the hardening end-to-end tests: a latency proxy in front of Redis, a recording
webhook receiver, watch registration ahead of the jobs, and Redis fault switches (a failover to
a dead master, a full Redis under `noeviction`, a busy script).

Everything here talks to the service only through its public surface: HTTP, `VTW_*`
variables, the simulator's HTTP API, and Redis commands on a redis-server the test started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from .helpers import Simulator, gather_limited
from .procs import Processes, free_port, poll_until

CHUNK = 64 * 1024


# -- a TCP proxy that adds latency ----------------------------------------------------------


class LatencyProxy:
    """Forwards TCP connections on a loopback port to `target`, delaying every chunk by
    `delay` seconds in each direction (order kept): a Redis "2 ms away" on one machine."""

    def __init__(self, target_port: int, delay: float, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
            self._writers.add(upstream_writer)
            there = asyncio.ensure_future(self._forward(reader, upstream_writer))
            back = asyncio.ensure_future(self._forward(upstream_reader, writer))
            try:
                await asyncio.wait({there, back}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for direction in (there, back):
                    direction.cancel()
                await asyncio.gather(there, back, return_exceptions=True)
        except OSError:
            pass  # the target refused or a side reset: close both ends
        finally:
            for end in (writer, upstream_writer):
                if end is not None:
                    self._writers.discard(end)
                    end.close()
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while chunk := await reader.read(CHUNK):
                queue.put_nowait((loop.time() + self.delay, chunk))
            queue.put_nowait((loop.time() + self.delay, b""))
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


# -- serving aiohttp apps in the test process -----------------------------------------------


async def serve(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve `app` on a free loopback port; returns its runner (to clean up) and base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"


# -- a webhook receiver that records every POST ---------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One POST as the receiver saw it; `received_at` is the receiver's wall clock."""

    number: int  # 1-based, in order of arrival
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def signed_at(self) -> int | None:
        value = self.headers.get("webhook-timestamp", "")
        return int(value) if value.isdigit() else None

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


# How the receiver answers the n-th POST: a status code (after any wait of its own).
Respond = Callable[[Arrival], Awaitable[int]]


async def answer_204(arrival: Arrival) -> int:
    return 204


@dataclass
class Receiver:
    """A webhook receiver at `{url}/hooks`: records each POST at once, then answers it with
    the status code `respond` returns."""

    respond: Respond = answer_204
    arrivals: list[Arrival] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hooks"

    async def start(self, host: str = "127.0.0.1") -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner, self.url = await serve(app, host)
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        arrival = Arrival(len(self.arrivals) + 1, headers, body, time.time())
        self.arrivals.append(arrival)
        return web.Response(status=await self.respond(arrival))

    def by_webhook_id(self) -> dict[str, list[Arrival]]:
        grouped: dict[str, list[Arrival]] = {}
        for arrival in self.arrivals:
            grouped.setdefault(arrival.webhook_id, []).append(arrival)
        return grouped

    async def wait_for(self, count: int, *, timeout: float, what: str) -> list[Arrival]:
        """Poll until at least `count` POSTs arrived; returns them all."""

        async def arrived() -> list[Arrival] | None:
            return list(self.arrivals) if len(self.arrivals) >= count else None

        return await poll_until(arrived, timeout=timeout, what=what, interval=0.02)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# -- registering watches through the API ----------------------------------------------------


async def register_watch(
    http: httpx.AsyncClient,
    api_url: str,
    status_url: str,
    policy: dict[str, float],
    *,
    webhook_url: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"status_url": status_url, "policy": policy}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if metadata is not None:
        body["metadata"] = metadata
    response = await http.post(f"{api_url}/v1/watches", json=body)
    assert response.status_code == 201, response.text
    watch: dict[str, Any] = response.json()
    assert watch["state"] == "pending", watch
    return watch


async def register_before_jobs(
    http: httpx.AsyncClient,
    api_url: str,
    sim: Simulator,
    specs: list[dict[str, Any]],
    policy: dict[str, float],
    *,
    webhook_url: str | None = None,
) -> list[tuple[dict[str, Any], str]]:
    """Register one watch per job spec on the job ids a fresh simulator will give (`j1`, ...),
    then create all the jobs in one batch, so their clocks start together. No worker may run
    before this returns (a poll would get 404). Returns (watch, job id) pairs."""
    stats = await sim.stats()
    assert stats["jobs"] == 0 and stats["requests"] == 0, "needs a fresh simulator"
    job_ids = [f"j{n}" for n in range(1, len(specs) + 1)]
    watches = await gather_limited(
        [
            lambda job_id=job_id: register_watch(
                http,
                api_url,
                f"{sim.url}/jobs/{job_id}/status",
                policy,
                webhook_url=webhook_url,
                metadata={"job": job_id},
            )
            for job_id in job_ids
        ]
    )
    jobs = await sim.create_jobs(specs)
    assert [job["id"] for job in jobs] == job_ids, "the simulator numbers jobs differently"
    assert (await sim.stats())["requests"] == 0, "something polled before the jobs existed"
    return list(zip(watches, job_ids, strict=True))


async def webhook_secret(http: httpx.AsyncClient, api_url: str) -> str:
    response = await http.get(f"{api_url}/v1/webhook-secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


# -- Redis faults, each an async context manager (the fault holds inside the block) ---------


async def _write_fails(redis: aioredis.Redis, error: type[ResponseError]) -> bool:
    """True when a plain write is refused with `error`."""
    try:
        await redis.set("vtw-test:fault-probe", "1")
    except error:
        return True
    return False


@contextlib.asynccontextmanager
async def replica_of_dead_master(redis: aioredis.Redis) -> AsyncIterator[None]:
    """A failover gone half-way: `REPLICAOF` a port nobody listens on, so every write gets
    READONLY (reads still work); `REPLICAOF NO ONE` afterwards."""
    await redis.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        await poll_until(
            lambda: _write_fails(redis, ReadOnlyError), timeout=5, what="writes to get READONLY"
        )
        yield
    finally:
        await redis.execute_command("REPLICAOF", "NO", "ONE")


@contextlib.asynccontextmanager
async def full_memory(redis: aioredis.Redis) -> AsyncIterator[None]:
    """A full Redis under the production policy: `maxmemory-policy noeviction` with
    `maxmemory` below the memory in use, so every write gets OOM; the limits are restored
    afterwards."""
    before = await redis.config_get("maxmemory*")
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", str(max(1, used // 2)))
    try:
        await poll_until(
            lambda: _write_fails(redis, OutOfMemoryError), timeout=5, what="writes to get OOM"
        )
        yield
    finally:
        await redis.config_set("maxmemory", before.get("maxmemory") or "0")
        await redis.config_set("maxmemory-policy", before.get("maxmemory-policy") or "noeviction")


BUSY_SCRIPT = "local n = 0 while true do n = n + 1 end"


@contextlib.asynccontextmanager
async def busy_script(redis_url: str, threshold_ms: int = 100) -> AsyncIterator[None]:
    """A read-only Lua busy loop: after `threshold_ms` (`busy-reply-threshold`) every other
    command gets BUSY; `SCRIPT KILL` ends it afterwards."""
    admin = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    runner = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    try:
        await admin.config_set("busy-reply-threshold", str(threshold_ms))
        script = asyncio.ensure_future(runner.eval(BUSY_SCRIPT, 0))

        async def busy() -> bool:
            try:
                await admin.ping()
            except ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        try:
            await poll_until(busy, timeout=5, what="Redis to answer BUSY", interval=0.02)
            yield
        finally:

            async def killed() -> bool:
                with contextlib.suppress(ResponseError):
                    await admin.execute_command("SCRIPT", "KILL")
                return script.done()

            await poll_until(killed, timeout=10, what="the busy script to be killed")
            with contextlib.suppress(ResponseError):
                await script
    finally:
        await runner.aclose()
        await admin.aclose()


# -- stopping without blocking the event loop -----------------------------------------------


async def stop_gracefully(procs: Processes, timeout: float = 15.0) -> None:
    """SIGTERM every process still running, Redis servers last, and wait for each to exit,
    polling, so that the servers of this event loop (receiver, upstream, proxy) keep answering
    meanwhile; SIGKILL whatever outlives `timeout`."""
    last = [proc for proc in procs.procs if proc.args[:1] == ["redis-server"]]
    first = [proc for proc in procs.procs if proc not in last]
    for group in (first, last):
        running = [proc for proc in group if proc.running()]
        for proc in running:
            proc.send(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            with contextlib.suppress(AssertionError):
                await proc.wait_exit(max(0.1, deadline - time.monotonic()))
            if proc.running():
                proc.popen.kill()
                await proc.wait_exit(10)
