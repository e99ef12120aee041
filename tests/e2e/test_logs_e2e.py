"""Logs of real processes (issue 9, item 2): with `VTW_LOG_FORMAT=json` every line of the API
and the worker is one JSON event; API lines (uvicorn's access log included) carry the request
id; delivery lines carry watch_id, tenant and attempt; no key or URL query string appears."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .faults import Receiver
from .helpers import FAST_POLICY, Simulator
from .procs import SHARED_REDIS_URL, Processes, free_port, poll_until, service_env, vtwatch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY = "logs-test-key-0123456789"


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_json_logs_carry_request_ids_and_watch_context(
    namespace: str, procs: Processes, http: httpx.AsyncClient
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, api_keys=f"acme:{KEY}", log_format="json")
    _, sim_url = await procs.start_simulator("simulator", "--seed", "21")
    port = free_port()
    api = procs.start("api", [*vtwatch(), "api", "--host", "127.0.0.1", "--port", str(port)], env)
    api_url = f"http://127.0.0.1:{port}"
    await procs.wait_http(api, f"{api_url}/healthz")
    worker = procs.start_worker(env)
    receiver = await Receiver().start()
    try:
        (job,) = await Simulator(http, sim_url).create_jobs([{"duration": 0.3}])
        auth = {"Authorization": f"Bearer {KEY}", "X-Request-ID": "req-e2e-1"}
        body = {
            "status_url": job["status_url"] + "?token=secret-query",
            "webhook_url": receiver.hook_url,
            "policy": FAST_POLICY,
        }
        created = await http.post(f"{api_url}/v1/watches", json=body, headers=auth)
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "req-e2e-1"
        await receiver.wait_for(1, timeout=20, what="the webhook")

        async def delivery_logged() -> list[dict[str, Any]] | None:
            lines = [e for e in events(worker.log()) if "webhook of" in e["msg"]]
            return lines or None

        (delivery,) = await poll_until(delivery_logged, timeout=10, what="the delivery line")
    finally:
        await receiver.aclose()

    api_events = events(api.log())
    assert events(worker.log())  # every line JSON, or `events` fails
    access = [e for e in api_events if e["logger"] == "uvicorn.access"]
    assert any(e.get("request_id") == "req-e2e-1" and "/v1/watches" in e["msg"] for e in access)
    assert (delivery["watch_id"], delivery["tenant"], delivery["attempt"]) == (
        created.json()["id"],
        "acme",
        1,
    )
    for text in (api.log(), worker.log()):
        assert KEY not in text and "secret-query" not in text
