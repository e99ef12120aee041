"""Metrics after a real run (issue 9, item 1): a `vtwatch api`, one `vtwatch worker` with its
metrics port, the simulator and a webhook receiver; both `/metrics` are scraped afterwards and
their counters and histograms must have moved by exactly what happened."""

from __future__ import annotations

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from .faults import Receiver, register_before_jobs
from .helpers import FAST_POLICY, Api, Simulator, wait_all_done
from .procs import SHARED_REDIS_URL, Processes, free_port, poll_until, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient, url: str) -> Samples:
    response = await http.get(url)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_of_api_and_worker_count_what_happened(
    namespace: str, procs: Processes, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    metrics_port = free_port()
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        lease_seconds=5,
        metrics_port=metrics_port,
        metrics_refresh_seconds=0.1,  # the API's backlog gauges: read in the background
    )
    _, sim_url = await procs.start_simulator("simulator", "--seed", "3")
    _, api_url = await procs.start_api(env)
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    receiver = await Receiver().start()
    try:
        specs = [{"duration": 0.5, "outcome": "completed"}] * 6
        specs += [{"duration": 0.3, "outcome": "error"}] * 3
        specs += [{"duration": 3600, "outcome": "completed"}] * 2  # times out
        policy = {**FAST_POLICY, "max_wait_time": 4.0}  # ample for the 0.5 s jobs under load
        await register_before_jobs(http, api_url, sim, specs, policy, webhook_url=receiver.hook_url)
        worker = procs.start_worker(env)
        await wait_all_done(api, len(specs), timeout=30, alive=procs.check_alive)
        await receiver.wait_for(len(specs), timeout=15, what="every webhook")
        worker_url = f"http://127.0.0.1:{metrics_port}"
        health = await http.get(f"{worker_url}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}

        async def all_recorded() -> Samples | None:
            scraped = await scrape(http, f"{worker_url}/metrics")
            attempts = value(scraped, "vtwatch_webhook_attempts_total", outcome="delivered")
            return scraped if attempts == len(specs) else None

        worked = await poll_until(all_recorded, timeout=10, what="the deliveries counted")
        served = await scrape(http, f"{api_url}/metrics")
        stats = await sim.stats()
    finally:
        await receiver.aclose()

    assert worker.running()
    finished = {
        state: value(worked, "vtwatch_watches_finished_total", state=state)
        for state in ("completed", "error", "timeout")
    }
    assert finished == {"completed": 6, "error": 3, "timeout": 2}
    polls = {
        outcome: value(worked, "vtwatch_polls_total", outcome=outcome)
        for outcome in ("pending", "completed", "error", "transient")
    }
    assert polls["completed"] == 6 and polls["error"] == 3 and polls["transient"] == 0
    assert sum(polls.values()) == stats["requests"]  # every request the simulator answered
    assert value(worked, "vtwatch_poll_duration_seconds_count") == stats["requests"]
    assert value(worked, "vtwatch_schedule_lag_seconds_count") == stats["requests"]
    assert value(worked, "vtwatch_webhook_duration_seconds_count") == len(specs)
    assert value(worked, "vtwatch_notify_latency_seconds_count") == len(specs)
    assert value(worked, "vtwatch_lease_lost_total") == 0
    assert value(worked, "vtwatch_inflight_polls") == 0

    assert value(served, "vtwatch_watches_registered_total") == len(specs)
    assert value(served, "vtwatch_due_backlog") == 0
    post = {"method": "POST", "route": "/v1/watches", "status": "2xx"}
    assert value(served, "vtwatch_http_request_duration_seconds_count", **post) == len(specs)
