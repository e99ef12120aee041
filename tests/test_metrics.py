"""Prometheus metrics of the API, in process (issue 9, item 1)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import LoopCounter, LoopHistogram
from tests.service_fixtures import ApiFactory

BODY = {"status_url": "http://translate-1:5000/status"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_api_serves_prometheus_metrics_that_move(make_api: ApiFactory) -> None:
    api = await make_api()
    before = samples((await api.get("/metrics")).text)

    first = await api.post("/v1/watches", json=BODY)
    await api.post("/v1/watches", json=BODY)
    await api.delete(f"/v1/watches/{first.json()['id']}")
    scrape = await api.get("/metrics")

    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    after = samples(scrape.text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("vtwatch_watches_registered_total") == 2
    assert moved("vtwatch_watches_finished_total", state="cancelled") == 1
    # The backlog gauges are read in the background: tests/test_api_ops_hardening.py.
    posted = ("POST", "/v1/watches", "2xx")
    count = dict(zip(("method", "route", "status"), posted, strict=True))
    assert moved("vtwatch_http_request_duration_seconds_count", **count) == 2
    deleted = {"method": "DELETE", "route": "/v1/watches/{watch_id}", "status": "2xx"}
    assert moved("vtwatch_http_request_duration_seconds_count", **deleted) == 1


async def test_metric_labels_never_carry_ids_paths_or_tenants(make_api: ApiFactory) -> None:
    api = await make_api()
    created = (await api.post("/v1/watches", json=BODY)).json()
    await api.get(f"/v1/watches/{created['id']}")
    await api.get("/no/such/path/w_secret")

    text = (await api.get("/metrics")).text

    assert created["id"] not in text and "w_secret" not in text and "default" not in text
    assert 'route="unmatched"' in text


async def test_a_workers_healthz_fails_when_a_loop_is_stuck() -> None:
    import asyncio

    import fakeredis
    from aiohttp.test_utils import TestClient, TestServer

    from service.store.keys import Keys
    from service.store.queue import LeasedQueue
    from worker import health
    from worker.loop import ClaimLoop

    class Idle(ClaimLoop):
        name = "idle"

        async def handle(self, claimed: object) -> None: ...

    queue = LeasedQueue(fakeredis.FakeAsyncRedis(), Keys(), "schedule")
    loop = Idle(queue, concurrency=1, lease_seconds=30)
    async with TestClient(TestServer(health.create_app([loop]))) as client:
        loop.heartbeat = asyncio.get_running_loop().time()
        fresh = await client.get("/healthz")
        loop.heartbeat -= health.STUCK_AFTER_SECONDS + 1
        stuck = await client.get("/healthz")
        scraped = await client.get("/metrics")

        assert fresh.status == 200 and (await fresh.json()) == {"status": "ok"}
        assert stuck.status == 503 and (await stuck.json())["status"] == "stuck"
        assert scraped.status == 200 and "vtwatch_polls_total" in await scraped.text()


def test_the_grafana_dashboard_charts_only_metrics_that_exist() -> None:
    import json
    import re
    from pathlib import Path

    from prometheus_client import REGISTRY

    import service.metrics  # noqa: F401 - registers them
    import worker.poller  # noqa: F401

    dashboard = json.loads(Path("deploy/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"vtwatch_[a-z_]+", expr)}
    known = {
        sample
        for family in REGISTRY.collect()
        for sample in (
            family.name,
            f"{family.name}_total",
            f"{family.name}_bucket",
            f"{family.name}_count",
        )
    }
    assert used and used <= known, used - known


def test_the_lock_free_poll_metrics_scrape_like_prometheus_clients_own() -> None:
    """`LoopHistogram` and `LoopCounter` (what every poll updates) expose what a
    prometheus-client Histogram and Counter would: cumulative `le` buckets, a bound inside its
    own bucket, `_count` equal to `+Inf`, a `_total` per label value, zeros included."""
    registry = CollectorRegistry()
    lag = LoopHistogram("t_lag_seconds", "lag", buckets=(0.1, 1.0), registry=registry)
    polls = LoopCounter("t_polls", "polls", "outcome", ("pending", "error"), registry=registry)
    for amount in (0.05, 0.1, 0.5, 7.0):
        lag.observe(amount)
    polls.inc("pending")
    polls.inc("pending")

    scraped = samples(generate_latest(registry).decode())
    assert scraped[("t_lag_seconds_bucket", (("le", "0.1"),))] == 2
    assert scraped[("t_lag_seconds_bucket", (("le", "1.0"),))] == 3
    assert scraped[("t_lag_seconds_bucket", (("le", "+Inf"),))] == 4
    assert scraped[("t_lag_seconds_count", ())] == 4
    assert scraped[("t_lag_seconds_sum", ())] == 7.65
    assert scraped[("t_polls_total", (("outcome", "pending"),))] == 2
    assert scraped[("t_polls_total", (("outcome", "error"),))] == 0
