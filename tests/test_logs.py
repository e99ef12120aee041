"""Logs (issue 9, item 2): one event per line, JSON or text, with context fields; request ids."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from service import logs
from service.api.app import create_app
from service.settings import Settings
from tests.service_fixtures import ApiFactory, fake_redis


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("test").makeRecord(
        "test", logging.INFO, __file__, 1, message, (), None, extra=extra
    )
    logs._Context().filter(made)
    return made


def test_a_json_line_carries_the_context_fields() -> None:
    line = logs.JsonFormatter().format(
        record("webhook delivered", **logs.watch_fields({"id": "w_1", "tenant": "acme"}, 3))
    )

    event = json.loads(line)
    assert event["msg"] == "webhook delivered" and event["level"] == "info"
    assert (event["watch_id"], event["tenant"], event["attempt"]) == ("w_1", "acme", 3)
    assert "request_id" not in event and "\n" not in line


def test_a_text_line_ends_with_its_context() -> None:
    line = logs.TextFormatter().format(record("lease lost", watch_id="w_2", tenant="t"))
    assert line.endswith("lease lost [watch_id=w_2 tenant=t]")


def test_an_exception_stays_on_one_json_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        made = logging.getLogger("test").makeRecord(
            "test", logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    line = logs.JsonFormatter().format(made)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exc"]


@pytest.mark.parametrize(
    ("sent", "kept"), [("abc-123.X_y", True), ("bad id with spaces", False), ("x" * 65, False)]
)
async def test_request_ids_are_taken_or_made_and_returned(
    make_api: ApiFactory, sent: str, kept: bool
) -> None:
    api = await make_api()

    response = await api.get("/v1/status", headers={"X-Request-ID": sent})
    fresh = await api.get("/v1/status")

    assert (response.headers["x-request-id"] == sent) is kept
    assert len(fresh.headers["x-request-id"]) == 32


async def test_a_500_answer_carries_the_request_id(no_vtw_env: None) -> None:
    """The answer Starlette sends for an unexpected error (from outside every middleware)
    still names the request, so a caller's report can be matched to the server's log."""
    redis = fake_redis()
    app = create_app(Settings(), redis=redis)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        response = await client.get("/boom", headers={"X-Request-ID": "report-42"})
    await redis.aclose()

    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert response.headers["x-request-id"] == "report-42"
