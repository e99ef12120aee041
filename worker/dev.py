"""`vtwatch dev`: the API and a worker in one process, sharing one store (embedded if no Redis).

With `--demo`, a simulator runs on :5000 too, and a first watch is registered and followed from
`pending` to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Iterator

import aiohttp
import uvicorn
from aiohttp import web
from pydantic import SecretStr

from client.simulator import SimulatorConfig
from client.simulator import create_app as create_simulator
from service.api.app import create_app
from service.api.auth import OPEN_TENANT, check_key_length, check_open_mode
from service.api.server import close_streams
from service.sealing import generate_key
from service.settings import Settings
from service.store.connection import connect

from .process import Worker

logger = logging.getLogger(__name__)
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
SIMULATOR_PORT = 5000


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run_dev` stops API and worker together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def with_ephemeral_secret_key(settings: Settings) -> Settings:
    """The settings as they are when VTW_SECRET_KEYS is set; else with a key made now, so that
    watches with upstream headers can be registered, and one line on the log saying so."""
    if settings.secret_keys:
        return settings
    logger.warning(
        "VTW_SECRET_KEYS not set: using an ephemeral key; the upstream credentials of watches "
        "registered now cannot be read after a restart"
    )
    return settings.model_copy(update={"secret_keys": (SecretStr(generate_key()),)})


async def run_dev(settings: Settings, host: str, port: int, *, demo: bool = False) -> int:
    """Serve until stopped; the exit status: 0, or 1 when the worker died (see below)."""
    check_open_mode(settings, host)
    check_key_length(settings, host)
    settings = with_ephemeral_secret_key(settings)
    # Local development polls local upstreams: the SSRF guard admits loopback here.
    settings = settings.model_copy(
        update={"allowed_networks": [*settings.allowed_networks, *LOOPBACK]}
    )
    redis = connect(settings)
    app = create_app(settings, redis=redis)
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None)
    server = _Server(config)
    worker = Worker(settings, redis, serve_metrics=False)  # the API serves /metrics
    loop = asyncio.get_running_loop()

    requested: list[bool] = []  # a signal asked to stop

    def stop() -> None:
        close_streams(app, loop)
        server.should_exit = True
        worker.stop()

    def on_signal() -> None:
        requested.append(True)
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    serving = asyncio.create_task(server.serve())
    working = asyncio.create_task(worker.run())
    tasks = [serving, working]
    simulator = None
    if demo:
        simulator, status_url = await _start_simulator()
        api = f"http://{host}:{port}"
        tasks.append(asyncio.create_task(_follow_first_watch(server, api, status_url)))
    try:
        await asyncio.wait([serving, working], return_when=asyncio.FIRST_COMPLETED)
        if working.done() and not requested:
            # An API whose watches nothing polls would only pretend to work: stop, loudly.
            error = working.exception() if not working.cancelled() else None
            logger.error("the worker stopped unexpectedly (%r): stopping the API", error)
            return 1
        return 0
    finally:
        stop()
        for follower in tasks[2:]:
            follower.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if simulator is not None:
            await simulator.cleanup()
        await redis.aclose()


async def _start_simulator() -> tuple[web.AppRunner, str]:
    """A simulator on :5000, or on a free port if that one is taken; returns its /status URL."""
    config = SimulatorConfig(delay=8.0, hints=True)
    runner = web.AppRunner(create_simulator(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", SIMULATOR_PORT).start()
    except OSError:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/status"


async def _follow_first_watch(server: uvicorn.Server, api: str, status_url: str) -> None:
    """Register one watch on the simulator and print it until it ends."""
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.05)
    body = {"status_url": status_url, "policy": {"max_interval": 2}}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{api}/v1/watches", json=body) as response:
            watch = await response.json()
        print(f"\nDemo: registered watch {watch['id']} (tenant {OPEN_TENANT}) on {status_url}")
        print(f"      follow it at {api}/v1/watches/{watch['id']} - API docs at {api}/docs\n")
        last = None
        while watch["state"] == "pending":
            await asyncio.sleep(0.5)
            async with session.get(f"{api}/v1/watches/{watch['id']}") as response:
                watch = await response.json()
            line = (watch["state"], watch["attempts"], watch["progress"])
            if line != last:
                print(f"Demo: state={line[0]} attempts={line[1]} progress={line[2]}", flush=True)
                last = line
        print(
            f"\nDemo: watch ended as {watch['state']!r}. The service keeps running; Ctrl-C stops."
        )
