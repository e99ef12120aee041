"""`/docs` on an air-gapped network (issue 18): a real API process, its page opened in a
headless browser (Debian's chromium driven by playwright) that may reach 127.0.0.1 and nothing
else. Swagger UI renders its operations from the app's own assets; no request tried to leave."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Route, expect

from .procs import SHARED_REDIS_URL, Processes, service_env

pytestmark = [pytest.mark.e2e]
KEY = "docs-offline-test-key-0123456789"
TIMEOUT_MS = 30_000


async def test_the_docs_render_with_no_host_but_the_api(
    namespace: str, procs: Processes, browser: Browser
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, api_keys=f"acme:{KEY}")  # /docs stays open
    _, api_url = await procs.start_api(env)
    page = await browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []

    async def loopback_only(route: Route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urlsplit(url).hostname == "127.0.0.1":
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort("internetdisconnected")

    await page.context.route("**/*", loopback_only)
    failed: list[str] = []
    page.on("requestfailed", lambda request: failed.append(request.url))

    await page.goto(f"{api_url}/docs", wait_until="networkidle")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
        "vtwatch", timeout=TIMEOUT_MS
    )
    path = page.locator('.opblock-summary-path[data-path="/v1/watches"]')
    operation = page.locator(".opblock-post", has=path)  # POST /v1/watches: register
    await expect(operation).to_be_visible(timeout=TIMEOUT_MS)
    await expect(operation.locator(".opblock-summary-method")).to_have_text("POST")
    await operation.locator(".opblock-summary-control").click()  # it opens, from the schema
    await expect(operation.locator(".opblock-body")).to_be_visible(timeout=TIMEOUT_MS)
    await page.wait_for_load_state("networkidle")
    assert blocked == []
    assert failed == []
