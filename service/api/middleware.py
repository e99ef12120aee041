"""The API's pure ASGI middlewares, outermost first, each one concern.

Observing (every request, before anything can refuse it):
- `TimeRequests` observes each request's duration for the metrics.
- `RequestIds` gives each request an id, on its log lines and in `X-Request-ID`.

What a request must pass before any route sees it:
- `Authenticate` resolves the caller's tenant from `Authorization` for every `/v1/` path (but
  a push callback's, `/v1/callbacks/{id}/{token}`: its token is the credential) and for
  `/metrics` (fleet-wide figures: with keys set, any tenant's key; open when no keys are
  configured, which only loopback allows) and answers 401 before a byte of the body is read.
- `LimitBody` refuses a body over the cap with 413 — a declared `Content-Length` at once, a
  streamed body as soon as the count passes the cap, so nothing reads more than that — and a
  JSON body that JSON cannot carry with 422: orjson refuses NaN and Infinity, numbers that
  overflow a double, lone surrogates, invalid UTF-8, which Python's `json` (FastAPI's parser)
  lets through; and nesting deeper than `MAX_JSON_DEPTH`, which no request needs and which
  Python's recursive parser fails on (near 1000 levels) with a 400 instead of a 422. A push
  callback's body is capped but never parsed (an upstream's, whatever it sends).

A refusal that leaves a body unread closes the connection (`Connection: close`), so the server
stops reading it too.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import REQUEST_ID
from ..metrics import HTTP_DURATION
from ..settings import Settings
from .auth import CHALLENGE, UNAUTHORIZED, is_callback, tenant_of
from .responses import MAX_BODY_BYTES, describe

MAX_JSON_DEPTH = 64
PROTECTED_PREFIX = "/v1/"
PROTECTED_PATHS = frozenset({"/metrics"})
TENANT_SCOPE_KEY = "vtwatch.tenant"  # where `Authenticate` leaves the tenant for `TenantDep`
REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestIds:
    """Every request gets an id: the caller's `X-Request-ID` if it is a sane token, else a new
    one. It is on every log line of the request and returned in `X-Request-ID`.

    A request that fails with an unexpected error leaves its id set: its `500` answer (and the
    server's access line of it) and the server's traceback line come after the error has left
    every middleware, still in the request's own task (uvicorn runs one per request, in a copy
    of a context without the id), so they carry it too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if VALID_REQUEST_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        # For the 500 answer, which Starlette sends from outside every middleware.
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)  # an error leaves the id set (see above)
        REQUEST_ID.reset(token)


class TimeRequests:
    """Observes every HTTP request's duration by method, route template and status class (no
    paths, ids or tenants, and only known methods: bounded labels). An event stream is timed
    to its first byte, not to its end (minutes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status_code, observed = time.perf_counter(), 500, False

        def observe() -> None:
            nonlocal observed
            observed = True
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_DURATION.labels(method, route, f"{status_code // 100}xx").observe(
                time.perf_counter() - started
            )

        async def send_and_note(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                if any(
                    name == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in message.get("headers", [])
                ):
                    observe()
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if not observed:
                observe()


def may_have_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


async def refuse(
    send: Send,
    status: int,
    detail: object,
    *,
    headers: Iterable[tuple[str, str]] = (),
    close: bool = False,
) -> None:
    """Answer `{"detail": ...}` with `status`; `close` ends the connection after it."""
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in headers),
    ]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def is_protected(path: str) -> bool:
    return (path.startswith(PROTECTED_PREFIX) and not is_callback(path)) or path in PROTECTED_PATHS


class Authenticate:
    """401 for a `/v1/` or `/metrics` request without a known key, before its body is read."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        tenant = tenant_of(headers.get("authorization"), self.settings)
        if tenant is None:
            challenge = CHALLENGE.items()
            await refuse(send, 401, UNAUTHORIZED, headers=challenge, close=may_have_body(headers))
            return
        scope[TENANT_SCOPE_KEY] = tenant
        await self.app(scope, receive, send)


class LimitBody:
    """413 beyond `max_bytes` of body; 422 for a JSON body that is not strict JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.too_large = f"request body over {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not may_have_body(headers):
            await self.app(scope, receive, send)
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_bytes:
            await refuse(send, 413, self.too_large, close=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its whole body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await refuse(send, 413, self.too_large, close=True)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and _is_json(headers) and not is_callback(scope["path"]):
            why = _not_strict_json(body)
            if why is not None:
                await refuse(send, 422, describe([why]))
                return
        await self.app(scope, _replay(body, receive), send)


def _content_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def _is_json(headers: Headers) -> bool:
    """FastAPI's rule: `application/json` or `application/*+json` bodies are parsed as JSON."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _not_strict_json(body: bytes) -> dict[str, object] | None:
    """FastAPI's error for a body that does not parse, if it does not; else None."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        loc: tuple[str | int, ...] = ("body", exc.pos)
        error = exc.msg
    else:
        if not _nests_deeper(value, MAX_JSON_DEPTH):
            return None
        loc, error = ("body",), f"nesting deeper than {MAX_JSON_DEPTH} levels"
    return {
        "type": "json_invalid",
        "loc": loc,
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": error},
    }


def _nests_deeper(value: object, limit: int) -> bool:
    """Whether arrays and objects in `value` nest more than `limit` levels deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in item)
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body already read, then what the server sends next
    (`http.disconnect`)."""
    first: Message | None = {"type": "http.request", "body": body, "more_body": False}

    async def replay() -> Message:
        nonlocal first
        if first is None:
            return await receive()
        message, first = first, None
        return message

    return replay
