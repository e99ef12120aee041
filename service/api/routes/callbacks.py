"""Push callbacks: `POST` or `GET /v1/callbacks/{watch_id}/{token}`, with no API key.

A watch registered with `"callback": true` got a `callback_url` holding a token (128 random bits;
Redis keeps only its SHA-256). The caller hands that URL to the upstream as the job's webhook;
a request there makes the watch due now (`Store.callback`, callback.lua), at most once per
`VTW_MIN_POLL_INTERVAL`, and the worker confirms by polling the status URL: the callback's body
is never trusted (capped at 64 KiB by `LimitBody`, never parsed; a short printable excerpt is
logged at debug level). Unknown watch, wrong token and ended watch answer one `404`, byte for
byte (no oracle). `middleware.Authenticate` lets exactly this path through (`auth.is_callback`).
The token is a credential: the server's access lines show it as `***` (`RedactTokens`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...metrics import CALLBACKS
from ..auth import is_callback, redact
from ..deps import SettingsDep, StoreDep
from ..responses import errors
from .watches import callback_token_hash

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["callbacks"])
NOT_FOUND_DETAIL = "no such callback"
EXCERPT_BYTES = 200
OUTCOMES = {outcome: CALLBACKS.labels(outcome) for outcome in ("accepted", "ignored", "rejected")}


class RedactTokens(logging.Filter):
    """Replaces the token of a push-callback path in a log line's arguments (uvicorn's access
    line carries the request's path) with `***`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, str) and "/v1/callbacks/" in arg for arg in record.args
        ):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


# A filter of the logger itself (not of a handler): `logs.configure` replaces handlers only.
logging.getLogger("uvicorn.access").addFilter(RedactTokens())


class CallbackAccepted(BaseModel):
    status: str = Field("accepted", description="always `accepted`: the watch will be polled")


ROUTE: dict[str, Any] = {
    "path": "/callbacks/{watch_id}/{token}",
    "status_code": status.HTTP_202_ACCEPTED,
    "response_model": CallbackAccepted,
    "responses": errors(
        404,
        413,
        503,
        why={404: "unknown watch, wrong token or ended watch (one answer for all three)"},
    ),
}


@router.get(**ROUTE, operation_id="push_callback_get")
@router.post(**ROUTE, operation_id="push_callback_post")
async def push_callback(
    watch_id: str, token: str, request: Request, store: StoreDep, settings: SettingsDep
) -> Any:
    """A job's upstream says something happened: the watch is polled now to see what (at most
    once per `VTW_MIN_POLL_INTERVAL`; a callback within it answers `202` and changes nothing).
    No API key: the URL's token is the credential."""
    outcome = "missing"
    if is_callback(f"/v1/callbacks/{watch_id}/{token}"):  # else no such token: not even asked
        outcome = await store.callback(
            watch_id, callback_token_hash(token), settings.min_poll_interval
        )
    if outcome == "missing":
        OUTCOMES["rejected"].inc()
        return _not_found()
    OUTCOMES[outcome].inc()
    if logger.isEnabledFor(logging.DEBUG):
        body = await request.body()
        logger.debug(
            "callback for %s (%s): %s",
            watch_id,
            outcome,
            _printable(body[:EXCERPT_BYTES]),
        )
    return CallbackAccepted()


def _not_found() -> JSONResponse:
    """The one 404 of this route: the same status, body and headers whatever was wrong."""
    return JSONResponse({"detail": NOT_FOUND_DETAIL}, status_code=status.HTTP_404_NOT_FOUND)


def _printable(raw: bytes) -> str:
    """A short excerpt of a body as printable ASCII (anything else as `?`): safe in any log."""
    return "".join(chr(b) if 32 <= b < 127 else "?" for b in raw)
