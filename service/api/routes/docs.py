"""`GET /docs`: Swagger UI over `/openapi.json`, self-hosted (issue 18): its script, style and
favicon are served from this package under `/docs-assets/`, never from a CDN, so the page works
on an air-gapped network. ReDoc (FastAPI's `/redoc`, CDN-only) is not offered.

The assets are swagger-ui-dist's, vendored unmodified in `static/swagger/` with its LICENSE and
NOTICE (Apache-2.0); to update them, `npm pack swagger-ui-dist` and copy the same files. Like
`/openapi.json`, these pages are open: no key is needed to read how to call the API.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
ASSETS_URL = "/docs-assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"  # where FastAPI's own /docs had it
router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """The `/docs` routes and the static mount of their assets. Build `app` with `docs_url=None`
    and `redoc_url=None` (FastAPI's own pages load from a CDN)."""
    app.include_router(router)
    app.mount(
        ASSETS_URL,
        StaticFiles(packages=[("service.api", "static/swagger")]),
        name="docs-assets",
    )


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    openapi_url = request.app.openapi_url or "/openapi.json"
    return get_swagger_ui_html(
        openapi_url=root + openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
        oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
        # No badge from validator.swagger.io: the page asks nothing of any other host.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()
