"""Test doubles shared by the tests: a virtual clock, a scripted upstream, `served` (an
aiohttp app on a free loopback port) and `until` (a condition awaited with a deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


class VirtualClock:
    """A monotonic clock that only moves when something sleeps or a request takes time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0, seconds
        self.sleeps.append(seconds)
        self.now += seconds


Reply = tuple[int, object, dict[str, str]]


@dataclass
class ScriptedUpstream:
    """An upstream whose answer is a function of virtual time; each request costs `request_time`."""

    clock: VirtualClock
    answer: Callable[[float], Reply]
    request_time: float = 0.0
    request_times: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.clock.now += self.request_time
        self.request_times.append(self.clock.now)
        status, body, headers = self.answer(self.clock.now)
        text = body if isinstance(body, str) else json.dumps(body)
        return web.Response(
            status=status, text=text, headers=headers, content_type="application/json"
        )

    async def start(self) -> TestServer:
        app = web.Application()
        app.router.add_get("/status", self.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        return server


def job_ending_at(end: float, outcome: str = "completed") -> Callable[[float], Reply]:
    def answer(now: float) -> Reply:
        return 200, {"result": outcome if now >= end else "pending"}, {}

    return answer


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (no trailing slash)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Until `check()` is true, looking every 10 ms; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)
