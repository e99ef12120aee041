"""The API's operational edges: the log lines of a `500` carry the request's id."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from service import logs
from service.app import create_app
from service.settings import Settings
from service.store import Store
from tests.e2e.procs import free_port
from tests.service_fixtures import fake_redis

UVICORN_LOGGERS = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float = 10.0) -> Any:
    """Until `check()` returns something truthy (looking every 20 ms); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (result := await check()):
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.02)
    return result


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
