"""The API's operational edges: `/metrics` needs a key when keys are set and a scrape sends no
Redis command at any P; a process started while Redis was down checks the partition count
before it is ready or writes; the log lines of a `500` carry the request's id.

The command counts and the partition check use a `redis-server` of the test's own (INFO
commandstats counts every command it ran; nothing else talks to it)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from service import logs
from service.api.app import create_app
from service.settings import Settings
from service.store.keys import Keys
from service.store.watches import Store
from tests.e2e.procs import free_port
from tests.redis_cluster import redis_server
from tests.service_fixtures import ApiFactory, down_redis, fake_redis

BODY = {"status_url": "http://translate-1:5000/status"}
KEYS = {"key-of-tenant-a-0123": "a", "key-of-tenant-b-0123": "b"}
UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
    """Until `check()` returns something truthy (looking every 20 ms); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
    return result


def gauge(text: str, name: str) -> float:
    (value,) = (
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )
    return value


# -- a Redis of the test's own ----------------------------------------------------------------


class OwnRedis:
    """A `redis-server` on a free port, started and stopped by the test."""

    def __init__(self, data: Path) -> None:
        self.port, self.data = free_port(), data
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = aioredis.Redis(port=self.port, decode_responses=True)

    async def start(self) -> None:
        self.proc = redis_server(self.port, self.data)

        async def answers() -> bool:
            try:
                return bool(await self.admin.ping())
            except RedisError:
                return False

        await eventually(answers)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    async def calls(self, command: str | None = None) -> int:
        """Commands this server ran (one, or all but INFO: the counting itself)."""
        stats = await self.admin.info("commandstats")
        return sum(
            int(stat["calls"])
            for name, stat in stats.items()
            if (name == f"cmdstat_{command}" if command else name != "cmdstat_info")
        )


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = OwnRedis(tmp_path / "redis")
    try:
        yield redis
    finally:
        await redis.admin.aclose()
        redis.stop()


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API (lifespan included) on its own connection to `settings.redis_url`."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


# -- 1. /metrics: a key when keys are set; no Redis command per scrape ------------------------


async def test_metrics_needs_a_key_when_keys_are_set(make_api: ApiFactory) -> None:
    keyed = await make_api(Settings(api_keys=KEYS))

    missing = await keyed.get("/metrics")
    wrong = await keyed.get("/metrics", headers={"Authorization": "Bearer not-a-key-0123456"})
    scraped = [
        await keyed.get("/metrics", headers={"Authorization": f"Bearer {key}"}) for key in KEYS
    ]

    for refused in (missing, wrong):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "vtwatch_" not in refused.text
    for answered in scraped:
        assert answered.status_code == 200
        assert "vtwatch_due_backlog" in answered.text


async def test_metrics_stays_open_when_no_keys_are_configured(make_api: ApiFactory) -> None:
    """Open mode (loopback only: `check_open_mode`) keeps every endpoint open."""
    response = await (await make_api()).get("/metrics")
    assert response.status_code == 200 and "vtwatch_due_backlog" in response.text


async def test_the_openapi_document_says_metrics_takes_the_bearer_key(
    make_api: ApiFactory,
) -> None:
    schema = (await (await make_api()).get("/openapi.json")).json()
    operation = schema["paths"]["/metrics"]["get"]
    assert "401" in operation["responses"]
    assert operation["security"] == [{"HTTPBearer": []}]


@pytest.mark.parametrize("partitions", [1, 8])
async def test_a_scrape_sends_no_redis_command_whatever_the_partitions(
    own_redis: OwnRedis, no_vtw_env: None, partitions: int
) -> None:
    await own_redis.start()
    settings = Settings(
        redis_url=own_redis.url,
        namespace="m" + secrets.token_hex(4),
        partitions=partitions,
        api_keys=KEYS,
        metrics_refresh_seconds=3600,  # one read at the start, then none during the test
    )
    auth = {"Authorization": f"Bearer {next(iter(KEYS))}"}
    async with served(settings) as api:

        async def first_read_done() -> bool:
            text = (await api.get("/metrics", headers=auth)).text
            return gauge(text, "vtwatch_due_backlog") == 0

        await eventually(first_read_done)
        before = await own_redis.calls()
        scrapes = [await api.get("/metrics", headers=auth) for _ in range(25)]
        sent = await own_redis.calls() - before

    assert {scrape.status_code for scrape in scrapes} == {200}
    assert sent == 0  # was 25 × (2·P + 1): TIME, then ZCOUNT and ZRANGE per partition


async def test_the_backlog_gauges_follow_the_store_at_the_refresh_interval(
    make_api: ApiFactory,
) -> None:
    api = await make_api(Settings(metrics_refresh_seconds=0.02))

    async def backlog(expected: float) -> bool:
        return gauge((await api.get("/metrics")).text, "vtwatch_due_backlog") == expected

    await eventually(lambda: backlog(0))
    first = (await api.post("/v1/watches", json=BODY)).json()
    await api.post("/v1/watches", json=BODY)
    await eventually(lambda: backlog(2))  # both due now, unclaimed
    await api.delete(f"/v1/watches/{first['id']}")
    await eventually(lambda: backlog(1))
    text = (await api.get("/metrics")).text
    assert gauge(text, "vtwatch_oldest_due_age_seconds") >= 0


async def test_the_backlog_gauges_say_unknown_while_redis_cannot_be_read(
    make_api: ApiFactory,
) -> None:
    api = await make_api(Settings(metrics_refresh_seconds=0.02), redis=down_redis())

    async def unknown() -> bool:
        text = (await api.get("/metrics")).text
        return (
            gauge(text, "vtwatch_due_backlog")
            == gauge(text, "vtwatch_oldest_due_age_seconds")
            == -1
        )

    assert (await api.get("/metrics")).status_code == 200
    await eventually(unknown)


# -- 2. the partition count, checked after a start without Redis ------------------------------


async def test_a_process_started_without_redis_checks_the_partitions_before_it_serves(
    own_redis: OwnRedis, no_vtw_env: None
) -> None:
    namespace = "p" + secrets.token_hex(4)
    meta = Keys(namespace).meta
    settings = Settings(
        redis_url=own_redis.url, namespace=namespace, partitions=4, metrics_refresh_seconds=3600
    )
    async with served(settings) as api:  # Redis is down: the start could not check
        assert (await api.get("/readyz")).json() == {"status": "unavailable"}
        assert (await api.post("/v1/watches", json=BODY)).status_code == 503

        await own_redis.start()
        await own_redis.admin.hset(meta, "partitions", 2)  # the store was made with P = 2
        ready = await api.get("/readyz")
        registered = await api.post("/v1/watches", json=BODY)

        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert "VTW_PARTITIONS is 4" in ready.json()["reason"]
        assert "created with 2 partitions" in ready.json()["reason"]
        assert registered.status_code == 503, registered.text
        detail = registered.json()["detail"]
        assert "VTW_PARTITIONS is 4" in detail and namespace not in detail
        assert await own_redis.admin.keys("*") == [meta]  # nothing was written

        await own_redis.admin.hset(meta, "partitions", 4)  # the store fixed: the counts match
        ready = await api.get("/readyz")
        registered = await api.post("/v1/watches", json=BODY)
        assert ready.status_code == 200 and ready.json() == {"status": "ok"}
        assert registered.status_code == 201, registered.text

        # Checked once it passed: later requests and probes send no HSETNX (the check's).
        checks = await own_redis.calls("hsetnx")
        for _ in range(5):
            assert (await api.post("/v1/watches", json=BODY)).status_code == 201
            assert (await api.get("/readyz")).status_code == 200
        assert await own_redis.calls("hsetnx") == checks


async def test_a_start_with_redis_up_and_another_partition_count_still_fails(
    no_vtw_env: None,
) -> None:
    redis = fake_redis()
    namespace = "p" + secrets.token_hex(4)
    await Store(redis, namespace=namespace, partitions=2).check_partitions()
    app = create_app(Settings(namespace=namespace, partitions=3), redis=redis)
    try:
        with pytest.raises(Exception, match="VTW_PARTITIONS is 3"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        await redis.aclose()


# -- 3. request ids on the log lines of a 500 -------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """JSON lines as `logs.configure` makes them (its formatter and context filter on a root
    handler), kept in a buffer; uvicorn's loggers at info, as `vtwatch api` runs them."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs._Context())
    root = logging.getLogger()
    root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in UVICORN_LOGGERS}
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


async def test_the_log_lines_of_a_500_carry_its_request_id(
    json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch, no_vtw_env: None
) -> None:
    async def broken(self: Store, tenant: str) -> dict[str, int]:
        raise RuntimeError("a bug in the store")

    monkeypatch.setattr(Store, "counts", broken)
    redis = fake_redis()
    port = free_port()
    app = create_app(Settings(), redis=redis)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="info")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await eventually(started)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/v1/status")
    finally:
        server.should_exit = True
        await serving
        await redis.aclose()

    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
    request_id = response.headers["x-request-id"]
    events = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    (traceback,) = [e for e in events if "RuntimeError: a bug in the store" in e.get("exc", "")]
    (access,) = [e for e in events if e["logger"] == "uvicorn.access" and "/v1/status" in e["msg"]]
    assert " 500" in access["msg"]
    assert traceback.get("request_id") == request_id
    assert access.get("request_id") == request_id
