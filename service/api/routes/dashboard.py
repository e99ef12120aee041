"""`GET /dashboard`: a page over the API for people — counts by state, a filtered list, one
watch's timeline, cancel and resend — in plain HTML, CSS and JavaScript (no build step).

The page holds no data and needs no key: its script asks for one when the API wants it, keeps
it in the browser session only (`sessionStorage`), and reads everything through `/v1/`, live
from the tenant's event stream (`GET /v1/events`) and, for the watch on show, its own.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)
STATIC = files("service.api") / "static"
# Scripts and styles from this origin only (no inline code): a value shown on the page can
# never run. The page talks to its own API only, and may not be framed.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
    " connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self';"
    " frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
ASSETS = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=ASSETS[name], headers=HEADERS)


@router.get("/dashboard")
async def dashboard() -> Response:
    return _asset("dashboard.html")


@router.get("/dashboard/dashboard.js")
async def dashboard_script() -> Response:
    return _asset("dashboard.js")


@router.get("/dashboard/dashboard.css")
async def dashboard_style() -> Response:
    return _asset("dashboard.css")
