"""The dashboard in a real headless browser (Debian's chromium driven by playwright), against a
real API, worker, simulator and webhook receiver: log in with a key, see a new watch appear and
turn completed without a reload, cancel another, resend a webhook, keep the filter in the URL,
read it on a phone. Screenshots go to `VTW_SCREENSHOTS_DIR` (README's come from
`make screenshots`), else to the test's temporary directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from .faults import Receiver
from .helpers import FAST_POLICY, Simulator
from .procs import SHARED_REDIS_URL, Processes, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
KEY = "dashboard-test-key-0123456789"
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("VTW_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def register(
    http: httpx.AsyncClient, api_url: str, status_url: str, webhook_url: str, name: str
) -> dict[str, Any]:
    response = await http.post(
        f"{api_url}/v1/watches",
        json={
            "status_url": status_url,
            "webhook_url": webhook_url,
            "policy": FAST_POLICY,
            "metadata": {"video": name},
        },
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 201, response.text
    watch: dict[str, Any] = response.json()
    return watch


def row(page: Page, watch_id: str, state: str | None = None) -> Any:
    selector = f'#list tr[data-id="{watch_id}"]'
    return page.locator(selector + (f'[data-state="{state}"]' if state else ""))


async def test_the_dashboard_follows_watches_live_and_acts_on_them(
    namespace: str,
    procs: Processes,
    http: httpx.AsyncClient,
    browser: Browser,
    screenshots: Path,
) -> None:
    env = service_env(SHARED_REDIS_URL, namespace, api_keys=f"acme:{KEY}")
    receiver = await Receiver().start()
    try:
        _, sim_url = await procs.start_simulator("simulator", "--seed", "9")
        _, api_url = await procs.start_api(env)
        procs.start_worker(env)
        sim = Simulator(http, sim_url)
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(TIMEOUT_MS)
        page.on("dialog", lambda dialog: dialog.accept())

        # The key prompt; the key stays in this tab's session storage only.
        await page.goto(f"{api_url}/dashboard")
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#key", "not-the-key-at-all")
        await page.click("#login button[type=submit]")
        await expect(page.locator("#login-error")).to_contain_text("refused")
        await page.fill("#key", KEY)
        await page.click("#login button[type=submit]")
        await expect(page.locator("#live")).to_have_text("live")
        assert await page.evaluate("sessionStorage.getItem('vtwatch.apiKey')") == KEY
        assert await page.evaluate("localStorage.length") == 0
        await page.evaluate("window.notReloaded = true")

        # A watch registered now appears, then turns completed, with no reload.
        short, long_ = await sim.create_jobs(
            [
                {"duration": 3.0, "outcome": "completed", "hints": True},
                {"duration": 600.0, "outcome": "completed"},
            ]
        )
        done = await register(http, api_url, short["status_url"], receiver.hook_url, "short.mp4")
        await expect(row(page, done["id"], "pending")).to_be_visible()
        await row(page, done["id"]).click()  # its timeline fills with polls as they happen
        await expect(page.locator("#timeline li.poll")).not_to_have_count(0)
        await expect(row(page, done["id"], "completed")).to_be_visible()
        await expect(page.locator("#timeline li.webhook")).to_have_count(1)
        assert await page.evaluate("window.notReloaded") is True

        # Cancel another from its detail pane.
        other = await register(http, api_url, long_["status_url"], receiver.hook_url, "long.mp4")
        await expect(row(page, other["id"], "pending")).to_be_visible()
        await row(page, other["id"]).click()
        await expect(page.locator("#detail-title")).to_have_text(other["id"])
        await screenshot(page, screenshots / "dashboard.png")
        await page.click("#cancel")
        await expect(row(page, other["id"], "cancelled")).to_be_visible()
        cancelled = await http.get(
            f"{api_url}/v1/watches/{other['id']}", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert cancelled.json()["state"] == "cancelled"

        # Resend the first one's webhook: a second attempt shows up in its timeline.
        await page.fill("#find-id", done["id"])
        await page.click("#find button[type=submit]")
        await expect(page.locator("#detail-title")).to_have_text(done["id"])
        await page.click("#resend")
        await expect(page.locator("#timeline li.webhook")).to_have_count(2)
        sent = receiver.by_webhook_id()
        assert [len(arrivals) for arrivals in sent.values()] == [2], sent  # same webhook-id

        # The filter lives in the URL, and a link to it opens filtered.
        await page.click('#counts a[data-state="cancelled"]')
        await expect(page).to_have_url(f"{api_url}/dashboard?state=cancelled&watch={done['id']}")
        await expect(row(page, done["id"])).to_have_count(0)
        await expect(row(page, other["id"], "cancelled")).to_be_visible()
        await page.goto(f"{api_url}/dashboard?state=completed")  # the key survives: same tab
        await expect(row(page, done["id"], "completed")).to_be_visible()
        await expect(row(page, other["id"])).to_have_count(0)
        await expect(page.locator('#counts a[data-state="completed"] .n')).to_have_text("1")
        await page.goto(f"{api_url}/dashboard?watch=.")  # garbage in a link: said, not shown
        await expect(page.locator("#message")).to_have_text('"." is not a watch id.')
        await expect(page.locator("#detail")).to_be_hidden()

        # Readable on a phone: nothing wider than the screen.
        phone = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.set_default_timeout(TIMEOUT_MS)
        await phone.goto(f"{api_url}/dashboard")
        await phone.fill("#key", KEY)
        await phone.click("#login button[type=submit]")
        await phone.goto(f"{api_url}/dashboard?watch={done['id']}")
        await expect(phone.locator("#detail-title")).to_have_text(done["id"])
        await expect(row(phone, other["id"])).to_be_visible()
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        await screenshot(phone, screenshots / "dashboard-phone.png")
    finally:
        await receiver.aclose()


async def screenshot(page: Page, path: Path) -> None:
    await page.wait_for_timeout(300)  # let the last update paint
    png = await page.screenshot(path=str(path), full_page=True)
    assert len(png) > 10_000
