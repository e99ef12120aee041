"""ASGI middlewares that observe the API: request durations for the metrics, request ids for
the logs."""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..logs import REQUEST_ID
from ..metrics import HTTP_DURATION

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
