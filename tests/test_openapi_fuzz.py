"""Fuzz the API from its own OpenAPI document (schemathesis): whatever a caller sends, valid or
not, no answer is a 5xx.

In process (ASGI), open mode, on fakeredis; a bounded, derandomized run (the same examples every
time, no example database), so it is quick and never flaky. What schemathesis cannot generate
(non-finite numbers, lone surrogates, oversized bodies) is sent to every operation by the last
test here; tests/test_api_hostile.py checks each of those answers in detail.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from service.api.app import create_app
from service.settings import Settings
from tests.service_fixtures import ApiFactory, fake_redis

MAX_EXAMPLES = 30  # per operation and phase


def open_app() -> FastAPI:
    """The app in open mode, whatever `VTW_*` variables the developer has set."""
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith("VTW_")]:
            env.delenv(name)
        return create_app(Settings(), redis=fake_redis())


# Loaded when the module is (schemathesis makes one test per operation at collection).
schema = schemathesis.openapi.from_asgi("/openapi.json", open_app())


# `GET /v1/events` takes no input and streams until the client leaves (tests/test_events.py).
@schema.exclude(path="/v1/events").parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_the_schema_allows_or_forbids_gets_a_5xx(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


UNGENERATED = {
    "nan": b'{"status_url": "http://translate-1/s", "policy": {"jitter": NaN}}',
    "infinity": b'{"status_url": "http://translate-1/s", "policy": {"max_attempts": Infinity}}',
    "overflow": b'{"status_url": "http://translate-1/s", "policy": {"max_wait_time": -1e309}}',
    "surrogate": b'{"status_url": "http://translate-1/s", "metadata": {"\\udc00": "\\ud800"}}',
    "not-utf8": b'{"status_url": "http://translate-1/s\xff"}',
    "deep": b"[" * 5000 + b"]" * 5000,
    "oversized": b'{"metadata": {"k": "' + b"x" * 70_000 + b'"}}',
}


@pytest.mark.parametrize("body", UNGENERATED.values(), ids=UNGENERATED.keys())
async def test_what_schemathesis_cannot_generate_gets_no_5xx_anywhere(
    make_api: ApiFactory, body: bytes
) -> None:
    api = await make_api()
    created = await api.post("/v1/watches", json={"status_url": "http://translate-1/s"})
    watch_id = created.json()["id"]
    paths = (await api.get("/openapi.json")).json()["paths"]

    for path, operations in paths.items():
        for method in operations:
            url = path.replace("{watch_id}", watch_id)
            response = await api.request(
                method, url, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code < 500, (method, path, response.text)
            assert response.status_code in {413, 422}, (method, path, response.text)
            assert len(response.content) < 2000
