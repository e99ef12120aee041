"""Server-Sent Events (see `service/api/sse.py`): `GET /v1/watches/{id}/events`, a watch's progress;
`GET /v1/events`, the tenant's watches as they are registered and end (the dashboard's feed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from ..deps import EventsDep, StoreDep, TenantDep
from ..responses import errors
from ..sse import parse_event_id, stream, tenant_stream
from .watches import NOT_FOUND, WatchId

router = APIRouter(prefix="/v1", tags=["watches"], responses=errors(401, 413, 422, 503))
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
EVENT_STREAM = {
    "content": {"text/event-stream": {}},
    "description": "`event: poll` per observed poll and `event: state` per state change, each"
    " with an `id:` and the Watch as JSON `data:`; heartbeat comments; ends after the"
    " terminal state",
}


@router.get(
    "/watches/{watch_id}/events",
    response_class=StreamingResponse,
    responses={200: EVENT_STREAM, **NOT_FOUND},
)
async def watch_events(
    watch_id: WatchId,
    store: StoreDep,
    hub: EventsDep,
    tenant: TenantDep,
    last_event_id: Annotated[
        str | None, Header(max_length=64, description="resume after this event")
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(alias="last_event_id", max_length=64, description="the same, for browsers"),
    ] = None,
) -> StreamingResponse:
    """Follow a watch until it ends; resumable with `Last-Event-ID`."""
    doc = await store.get(tenant, watch_id)
    after = parse_event_id(last_event_id or last_event_id_query)
    return StreamingResponse(
        stream(store, hub, tenant, doc, after),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


TENANT_STREAM = {
    "content": {"text/event-stream": {}},
    "description": "`event: watch` (the Watch as JSON `data:`) when one of the caller's watches"
    " is registered, ends, or has a webhook attempt or retry; `event: ready` once the"
    " subscription is live, `event: resync` when changes were missed; heartbeat comments",
}


@router.get("/events", response_class=StreamingResponse, responses={200: TENANT_STREAM})
async def tenant_events(store: StoreDep, hub: EventsDep, tenant: TenantDep) -> StreamingResponse:
    """Follow all of the caller's watches (registrations, ends, webhook attempts; no polls).
    Not resumable: after `ready`, read the list, then apply the events."""
    return StreamingResponse(
        tenant_stream(store, hub, tenant), media_type="text/event-stream", headers=SSE_HEADERS
    )
