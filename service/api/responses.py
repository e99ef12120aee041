"""The error answers of the HTTP API: as the OpenAPI document declares them, and the 422's.

Every error is `{"detail": ...}`: a sentence, or (422) FastAPI's list of invalid fields.
`errors(401, 404, ...)` is what a route or router passes as `responses=`.

Invalid input is answered in FastAPI's 422 shape, echoing only short, JSON-safe excerpts
(`describe`, `invalid_input`). FastAPI's own handler echoes each invalid input whole (a 60 KiB
body comes back as a 60 KiB error) and fails with a 500 on what JSON cannot carry (NaN, a lone
surrogate, undecodable bytes). Here every `input`, `loc` part, `msg` and `ctx` value is made
JSON-safe and cut short.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..errors import PartitionsMismatch

MAX_BODY_BYTES = 64 * 1024  # the request body's cap (`middleware.LimitBody`, the 413)
EXCERPT_CHARS = 100
MESSAGE_CHARS = 300
ELLIPSIS = "…"


class ErrorMessage(BaseModel):
    detail: str = Field(description="what went wrong, in a sentence")


class InvalidField(BaseModel):
    type: str
    loc: list[str | int] = Field(
        description="where: `body`, `query`, `path` or `header`, then names"
    )
    msg: str
    input: Any = Field(None, description="the invalid input, or a short excerpt of it")
    ctx: dict[str, Any] | None = None


class InvalidInput(BaseModel):
    detail: list[InvalidField]


WHY: dict[int, str] = {
    401: "missing or unknown API key (`WWW-Authenticate: Bearer`)",
    404: "no such watch for this tenant",
    409: "the request conflicts with the watch's state",
    413: f"request body over {MAX_BODY_BYTES} bytes",
    422: "invalid input: each item names the field (`loc`); `input` is at most a short excerpt",
    429: "the tenant has too many pending watches (VTW_MAX_ACTIVE_WATCHES)",
    503: "storage unavailable: Redis cannot be reached or cannot take writes; retry later",
}


def errors(*codes: int, why: Mapping[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """`responses=` for these error statuses; `why` replaces the default descriptions."""
    why = {**WHY, **(why or {})}
    return {
        code: {"model": InvalidInput if code == 422 else ErrorMessage, "description": why[code]}
        for code in codes
    }


def mismatch(exc: PartitionsMismatch) -> str:
    """What a caller may read of a mismatch: the counts, not the namespace."""
    return (
        f"this API process is misconfigured: VTW_PARTITIONS is {exc.configured} but the store "
        f"was created with {exc.stored} partitions; it takes no requests until that is fixed"
    )


def clip(text: str, limit: int = EXCERPT_CHARS) -> str:
    """`text` cut to `limit` characters, lone surrogates shown as escapes (UTF-8 cannot hold
    them)."""
    text = text[: limit + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def _json_text(value: Any) -> str | None:
    """The compact JSON of `value` if JSON can carry it exactly, else None."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return None
    return text


def excerpt(value: Any) -> Any:
    """The invalid input as it came when it is short and JSON-safe; else the start of its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = _json_text(value)
    if text is not None and len(text) <= EXCERPT_CHARS:
        return value
    if isinstance(value, str):
        return clip(value)
    if isinstance(value, bytes | bytearray):
        return clip(bytes(value[: EXCERPT_CHARS * 4]).decode("utf-8", "replace"))
    if text is None:
        try:  # as text, NaN and lone surrogates included: clip makes it safe
            text = json.dumps(value, ensure_ascii=False, default=repr, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError):
            return f"<{type(value).__name__}>"
    return clip(text)


def _loc_part(part: Any) -> str | int:
    return part if isinstance(part, int) else clip(str(part))


def _ctx(ctx: Mapping[str, Any]) -> dict[str, Any]:
    """The context values JSON can carry (an exception object, say, is dropped)."""
    kept = {}
    for name, value in ctx.items():
        if isinstance(value, str):
            kept[str(name)] = clip(value, MESSAGE_CHARS)
        elif _json_text(value) is not None:
            kept[str(name)] = excerpt(value)
    return kept


def describe(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as the `detail` of a 422: type, loc, msg, input and (if any) ctx."""
    described = []
    for error in errors:
        item: dict[str, Any] = {
            "type": clip(str(error.get("type", "value_error"))),
            "loc": [_loc_part(part) for part in error.get("loc", ())],
            "msg": clip(str(error.get("msg", "")), MESSAGE_CHARS),
            "input": excerpt(_without_credentials(error.get("loc", ()), error.get("input"))),
        }
        ctx = _ctx(error.get("ctx") or {})
        if ctx:
            item["ctx"] = ctx
        described.append(item)
    return described


def _without_credentials(loc: Sequence[Any], value: Any, depth: int = 0) -> Any:
    """An invalid input with upstream headers' values masked (an API key is never echoed):
    nothing under a `headers` location, `***` for each value of a `headers` object inside
    (whatever holds it: a body that is a list too), and nothing for a `headers` that is not
    an object. Past EXCERPT_CHARS levels nothing is kept: at least one character a level,
    the excerpt never reaches that deep."""
    if "headers" in loc or depth > EXCERPT_CHARS:
        return None
    if isinstance(value, list):
        return [_without_credentials((), item, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        key: ({name: "***" for name in inner} if isinstance(inner, dict) else None)
        if key == "headers"
        else _without_credentials((), inner, depth + 1)
        for key, inner in value.items()
    }


def invalid_input(errors: Iterable[Mapping[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": describe(errors)}, status_code=422)


def json_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON (orjson; Python's `json` for an integer beyond 64 bits,
    which a watch's metadata or result may hold and orjson refuses)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode()


def json_answer(value: Any, status_code: int = 200) -> Response:
    """An answer already in the shape of the route's declared model (`codec.watch_json`, say),
    sent as it is: no validation and serialisation again by the model (the model stays the
    route's `response_model`, for the OpenAPI document). FastAPI sends a returned `Response`
    untouched."""
    return Response(json_bytes(value), status_code=status_code, media_type="application/json")
