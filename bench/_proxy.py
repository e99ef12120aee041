"""A counting proxy in front of the upstream simulator: it sees every status request the fleet
sends the host, notes when each arrived and how it was answered, and can play a host that is
down (answers 503 itself).

Used by bench/hosts.py and tests/e2e/test_host_budget_e2e.py: arrivals kept as plain records,
a 503 mode that can be switched on and off, and the busiest one-second window in fixed and in
sliding windows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

FORWARDED_HEADERS = frozenset({"retry-after"})


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float  # time.monotonic() when the request arrived
    job: str
    status: int  # what the proxy answered (the simulator's status, or its own 503)


@dataclass
class CountingProxy:
    """Forwards `GET /jobs/{job}/status` to `target` (the simulator's base URL); while
    `failing`, answers 503 itself, without `Retry-After` (the host is down)."""

    target: str
    failing: bool = False
    arrivals: list[Arrival] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None
    _runner: web.AppRunner | None = None

    async def _status(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        job = request.match_info["job"]
        if self.failing:
            self.arrivals.append(Arrival(arrived, job, 503))
            return web.json_response({"detail": "down"}, status=503)
        assert self._session is not None
        async with self._session.get(f"{self.target}/jobs/{job}/status") as answer:
            body = await answer.read()
            headers = {k: v for k, v in answer.headers.items() if k.lower() in FORWARDED_HEADERS}
        self.arrivals.append(Arrival(arrived, job, answer.status))
        return web.Response(
            body=body, status=answer.status, headers=headers, content_type="application/json"
        )

    async def start(self, host: str = "127.0.0.1") -> str:
        """Serve on a free port of `host`; returns the proxy's base URL."""
        connector = aiohttp.TCPConnector(limit=0)  # never the bottleneck
        self._session = aiohttp.ClientSession(connector=connector)
        app = web.Application()
        app.router.add_get("/jobs/{job}/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, 0).start()
        return f"http://{host}:{self._runner.addresses[0][1]}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def times(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return [a.at for a in self.arrivals if since <= a.at < until]

    def answered(self) -> Counter[int]:
        return Counter(a.status for a in self.arrivals)

    def per_job(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(a.job for a in self.arrivals if since <= a.at < until)


def busiest_window(times: Sequence[float], length: float = 1.0) -> tuple[int, int]:
    """The most requests within `length` seconds: in fixed windows from the first request, and
    in any (sliding) window. `times` in the order they arrived."""
    if not times:
        return 0, 0
    start = times[0]
    fixed = Counter(int((t - start) // length) for t in times)
    sliding, left = 0, 0
    for right, t in enumerate(times):
        while t - times[left] >= length:
            left += 1
        sliding = max(sliding, right - left + 1)
    return max(fixed.values()), sliding


def per_second(times: Sequence[float]) -> list[int]:
    """Requests in each second from the first request."""
    if not times:
        return []
    counts = Counter(int(t - times[0]) for t in times)
    return [counts[i] for i in range(max(counts) + 1)]
