"""A webhook dispatcher SIGKILLed in the middle of a delivery loses nothing (DESIGN.md "Data
guarantees", "Webhooks": at least once, the same `webhook-id` on every attempt).

Real processes on loopback: `vtwatch api`, `vtwatch worker --only poller`, and `vtwatch worker
--only dispatcher` (one, then its replacement), over the shared Redis in a fresh namespace. The
upstream simulator and the webhook receiver run in the test process; the receiver verifies each
webhook with `standardwebhooks` and holds the first request open until the test ends.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import standardwebhooks
from aiohttp import web

from client.simulator import SimulatorConfig
from client.simulator import create_app as create_simulator

from .procs import SHARED_REDIS_URL, Processes, poll_until, service_env, vtwatch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEASE_SECONDS = 1.0
WEBHOOK_TIMEOUT = 1.0
POLICY = {"initial_wait_time": 0.05, "jitter": 0.0, "max_wait_time": 60}


@dataclass
class Arrival:
    headers: dict[str, str]
    body: bytes
    at: float
    error: str | None


@dataclass
class HoldingReceiver:
    """Holds the first webhook open (until `release`); answers 200 to every later one."""

    secret: str = ""
    arrivals: list[Arrival] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        error = None
        try:
            standardwebhooks.Webhook(self.secret).verify(body, headers)
        except standardwebhooks.WebhookVerificationError as exc:
            error = str(exc)
        self.arrivals.append(Arrival(headers, body, time.monotonic(), error))
        if error is not None:
            return web.json_response({"error": error}, status=400)
        if len(self.arrivals) == 1:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 60)
        return web.json_response({"ok": True})


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def start_dispatcher(procs: Processes, env: dict[str, str], name: str) -> Any:
    args = [*vtwatch(), "--log-level", "info", "worker", "--only", "dispatcher"]
    return procs.start(name, args, env)


async def test_a_sigkilled_dispatcher_mid_delivery_is_replaced_and_the_webhook_delivered(
    procs: Processes, namespace: str, http: httpx.AsyncClient
) -> None:
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        lease_seconds=LEASE_SECONDS,
        webhook_timeout=WEBHOOK_TIMEOUT,
        webhook_retry_schedule="0.2,0.2,0.2",
        shutdown_grace_seconds=1,
    )
    receiver = HoldingReceiver()
    receiver_app = web.Application()
    receiver_app.router.add_post("/hooks", receiver.handle)
    sim_runner, sim_url = await serve(create_simulator(SimulatorConfig(delay=0.0)))
    hook_runner, hook_url = await serve(receiver_app)
    try:
        _, api = await procs.start_api(env)
        worker_args = [*vtwatch(), "--log-level", "info", "worker", "--only", "poller"]
        procs.start("poller", worker_args, env)
        first = start_dispatcher(procs, env, "dispatcher-1")
        receiver.secret = (await http.get(f"{api}/v1/webhook-secret")).json()["secret"]

        created = await http.post(
            f"{api}/v1/watches",
            json={
                "status_url": f"{sim_url}/status",
                "webhook_url": f"{hook_url}/hooks",
                "policy": POLICY,
            },
        )
        assert created.status_code == 201, created.text
        watch_id = created.json()["id"]

        async def first_request() -> bool:
            return bool(receiver.arrivals)

        await poll_until(
            first_request, timeout=30, what="the first webhook", interval=0.01,
            alive=procs.check_alive,
        )  # fmt: skip
        first.send(signal.SIGKILL)  # while the receiver still holds that request
        assert await first.wait_exit(10) == -signal.SIGKILL
        killed_at = time.monotonic()

        # The killed attempt was never recorded: the kill came mid-request.
        watch = (await http.get(f"{api}/v1/watches/{watch_id}")).json()
        assert watch["state"] == "completed"
        assert watch["webhook"] == {"state": "pending", "attempts": 0, "last_status_code": None}
        log = (await http.get(f"{api}/v1/watches/{watch_id}/deliveries")).json()
        assert log["items"] == []

        start_dispatcher(procs, env, "dispatcher-2")

        async def delivered() -> dict[str, Any] | None:
            current: dict[str, Any] = (await http.get(f"{api}/v1/watches/{watch_id}")).json()
            return current if current["webhook"]["state"] == "delivered" else None

        done = await poll_until(
            delivered,
            timeout=LEASE_SECONDS + 25,
            what="the webhook delivered by the replacement dispatcher",
            interval=0.1,
            alive=procs.check_alive,
        )
    finally:
        receiver.release.set()
        await hook_runner.cleanup()
        await sim_runner.cleanup()

    assert [a.error for a in receiver.arrivals] == [None] * len(receiver.arrivals)
    assert len(receiver.arrivals) == 2, [a.headers for a in receiver.arrivals]
    held, redelivered = receiver.arrivals
    assert held.headers["webhook-id"] == redelivered.headers["webhook-id"] == f"msg_{watch_id}"
    assert held.body == redelivered.body
    event = json.loads(redelivered.body)
    assert event["type"] == "watch.completed" and event["data"]["id"] == watch_id
    # The replacement waited for the dead dispatcher's lease to lapse; it did not steal it
    # (the lease outlived the 1 s lease period while the receiver held the request: the lease
    # keeper extended it).
    assert redelivered.at - held.at >= LEASE_SECONDS, redelivered.at - held.at
    assert redelivered.at >= killed_at
    assert done["webhook"] == {"state": "delivered", "attempts": 1, "last_status_code": 200}
    (attempt,) = (await http.get(f"{api}/v1/watches/{watch_id}/deliveries")).json()["items"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    summary = (await http.get(f"{api}/v1/status")).json()
    assert summary["webhooks"] == {"pending": 0, "delivered": 1, "failed": 0}
