"""The operator's endpoints: liveness (`/healthz`), readiness (`/readyz`), metrics (`/metrics`).

Readiness is Redis answering and its partition count matching `VTW_PARTITIONS`: a process
started while Redis was down checks the count there and before its first request to the store
(`deps.PartitionCheck`), and answers `503` while it differs or cannot be read.

`/metrics` needs a key when keys are set (`middleware.Authenticate`) and reads no Redis: the
fleet-wide gauges of the schedule are read in the background (`app.read_backlog`).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field
from redis.exceptions import RedisError

from ...errors import PartitionsMismatch
from ..deps import PartitionCheckDep, get_tenant
from ..responses import errors, mismatch
from ..schemas import Health

router = APIRouter(tags=["health"])


class Readiness(Health):
    reason: str | None = Field(
        None, description="why not ready, beyond Redis not answering (absent when it is that)"
    )


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model_exclude_none=True, responses={503: {"model": Readiness}})
async def readyz(check: PartitionCheckDep, response: Response) -> Readiness:
    """Readiness: Redis answers, and the store's partition count is `VTW_PARTITIONS`."""
    try:
        await check.store.ping()
    except (RedisError, OSError):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="unavailable")
    try:
        await check.ensure()
    except PartitionsMismatch as exc:
        reason = mismatch(exc)
    except (RedisError, OSError) as exc:
        reason = f"the store's partition count could not be read ({type(exc).__name__})"
    else:
        return Readiness(status="ok")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="unavailable", reason=reason)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    dependencies=[Depends(get_tenant)],  # declares the key; `Authenticate` demands it
    responses=errors(401),
)
async def metrics() -> PlainTextResponse:
    """Prometheus metrics of this process, and the schedule's backlog (see the module)."""
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
