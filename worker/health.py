"""A worker's own small HTTP server (`VTW_METRICS_PORT`): `/metrics` for Prometheus and
`/healthz` for liveness probes, which fails when a claim loop has stopped making progress."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.settings import Settings

from .loop import ClaimLoop

logger = logging.getLogger(__name__)
# A loop that has neither claimed nor finished anything for this long is stuck (it claims at
# least every few seconds even when idle, and a finished poll or delivery counts too) - or for
# longer, when every slot may legitimately wait on its slowest request.
STUCK_AFTER_SECONDS = 60.0


def stuck_after(settings: Settings) -> float:
    slowest = max(settings.request_timeout, settings.webhook_timeout)
    return max(STUCK_AFTER_SECONDS, 2 * slowest + settings.lease_seconds)


def create_app(
    loops: Sequence[ClaimLoop], stuck_after_seconds: float = STUCK_AFTER_SECONDS
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        stuck = {loop.name: loop.stuck_for() for loop in loops}
        if any(seconds > stuck_after_seconds for seconds in stuck.values()):
            return web.json_response({"status": "stuck", "seconds": stuck}, status=503)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz)])
    return app


async def start(loops: Sequence[ClaimLoop], settings: Settings) -> web.AppRunner | None:
    """Serve on `VTW_METRICS_PORT`; None (and a warning) if it cannot be bound: metrics are not
    worth a worker that does not poll."""
    host, port = settings.metrics_host, settings.metrics_port
    runner = web.AppRunner(create_app(loops, stuck_after(settings)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        logger.warning("metrics and health endpoint not served: port %d: %s", port, exc)
        await runner.cleanup()
        return None
    logger.info("metrics and health on http://%s:%d/metrics, /healthz", host, port)
    return runner
