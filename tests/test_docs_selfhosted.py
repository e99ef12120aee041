"""`/docs` is self-hosted (issue 18): its page names no URL outside the app (no CDN), every
asset it names answers from the package, and like `/openapi.json` it needs no key. The page in
a browser cut off from every other host: tests/e2e/test_docs_offline_browser.py."""

from __future__ import annotations

import re

import httpx

from service.settings import Settings
from tests.service_fixtures import ApiFactory

KEYS = {"docs-test-key-0123456789abcdef": "acme"}
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")
ASSET = re.compile(r"""(?:src|href)="([^"]+)"|url: ?'([^']+)'|oauth2RedirectUrl: ?[^']*'([^']+)'""")


async def test_docs_name_no_other_host_and_their_assets_answer(make_api: ApiFactory) -> None:
    api = await make_api(Settings(api_keys=KEYS))  # with keys set, /docs stays open
    page = await api.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    assert "cdn.jsdelivr.net" not in page.text
    # Every absolute URL the page names (links in comments included) would leave the app.
    assert ABSOLUTE_URL.findall(page.text) == []
    named = {next(filter(None, groups)) for groups in ASSET.findall(page.text)}
    assert named == {
        "/docs-assets/swagger-ui.css",
        "/docs-assets/swagger-ui-bundle.js",
        "/docs-assets/favicon-32x32.png",
        "/openapi.json",
        "/docs/oauth2-redirect",  # as FastAPI's own /docs had it
    }
    types = {}
    for url in named:
        answer = await api.get(url)
        assert answer.status_code == 200, url
        assert answer.content, url
        types[url] = answer.headers["content-type"].split(";")[0]
    assert types["/docs-assets/swagger-ui-bundle.js"].endswith("/javascript")
    assert types["/docs-assets/swagger-ui.css"] == "text/css"
    assert types["/docs-assets/favicon-32x32.png"] == "image/png"
    assert ABSOLUTE_URL.findall((await api.get("/docs/oauth2-redirect")).text) == []


async def test_docs_honour_the_root_path(make_api: ApiFactory) -> None:
    """Behind a proxy that strips a prefix (`root_path`), every URL the page names has it."""
    api = await make_api()
    transport = api._transport
    assert isinstance(transport, httpx.ASGITransport)
    transport.root_path = "/vtw"
    page = (await api.get("/docs")).text
    assert "'/vtw/openapi.json'" in page
    assert '"/vtw/docs-assets/swagger-ui-bundle.js"' in page
    assert "'/vtw/docs/oauth2-redirect'" in page


async def test_redoc_is_not_offered_and_the_assets_are_read_only(api: httpx.AsyncClient) -> None:
    assert (await api.get("/redoc")).status_code == 404  # FastAPI's: a CDN page
    assert (await api.get("/docs-assets/")).status_code == 404  # no listing
    assert (await api.get("/docs-assets/../app.py")).status_code == 404
    assert (await api.get("/docs-assets/LICENSE")).status_code == 200
