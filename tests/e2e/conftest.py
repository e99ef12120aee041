"""Fixtures of the end-to-end tests: processes (torn down, logs shown on failure), a namespace
in the shared Redis (deleted afterwards), and HTTP clients."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.service_fixtures import delete_namespace, real_redis_or_skip

from .helpers import http_client
from .procs import Processes


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"e2e_report_{report.when}", report)
    return report


def _failed(node: pytest.Item) -> bool:
    return any(
        getattr(node, f"e2e_report_{when}", None) is not None
        and getattr(node, f"e2e_report_{when}").failed
        for when in ("setup", "call")
    )


@pytest.fixture
async def procs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Processes]:
    """Start processes with `procs.start_*`; all are stopped afterwards, and the tail of each
    log is printed when the test failed."""
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    processes = Processes(log_dir)
    try:
        yield processes
    finally:
        await processes.aclose()
        if _failed(request.node):
            print(f"\n===== logs of {request.node.name} (kept in {log_dir})")
            print(processes.report())
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


@pytest.fixture
async def shared_redis() -> AsyncIterator[aioredis.Redis]:
    client = await real_redis_or_skip()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def namespace(shared_redis: aioredis.Redis) -> AsyncIterator[str]:
    """A fresh `VTW_NAMESPACE` in the shared Redis; its keys (and its hosts' and upstreams',
    under tags of their own) are deleted afterwards."""
    ns = "e2e" + secrets.token_hex(6)
    try:
        yield ns
    finally:
        await delete_namespace(shared_redis, ns)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client() as client:
        yield client


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "redis-data"
    path.mkdir()
    return path


CHROMIUM = os.environ.get("VTW_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's chromium, headless, through playwright (imported here: only browser tests pay)."""
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is missing: `make test` installs Debian's chromium (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        yield launched
        await launched.close()
