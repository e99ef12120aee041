"""The error answers of the HTTP API as the OpenAPI document declares them.

Every error is `{"detail": ...}`: a sentence, or (422) FastAPI's list of invalid fields.
`errors(401, 404, ...)` is what a route or router passes as `responses=`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from .gate import MAX_BODY_BYTES


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
