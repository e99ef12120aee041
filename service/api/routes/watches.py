"""The v1 HTTP API: thin routes over the store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from client.presets import PRESETS, Preset
from client.ssrf import blocked_literal
from client.upstream import UpstreamSpecError

from ...domain import WatchState
from ...metrics import WATCHES_FINISHED, WATCHES_REGISTERED
from ...sealing import NOT_CONFIGURED_DETAIL, Sealer
from ...settings import Settings
from ...store.codec import HEADER_NAMES, SEALED_HEADERS, watch_json
from ...store.watches import Store
from ..deps import SettingsDep, StoreDep, TenantDep
from ..responses import errors, json_answer
from ..schemas import (
    StatusSummary,
    UpstreamSpec,
    Watch,
    WatchCreate,
    WatchCreated,
    WatchPage,
    summary_json,
)

router = APIRouter(prefix="/v1", tags=["watches"], responses=errors(401, 413, 422, 503))
WatchId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the watch's id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = errors(404)


@router.post(
    "/watches",
    status_code=status.HTTP_201_CREATED,
    response_model=WatchCreated,
    # `callback_url` only with `callback: true` (render_watch sets every other field).
    response_model_exclude_unset=True,
    responses={
        200: {
            "model": WatchCreated,
            "description": "an earlier request with this Idempotency-Key",
        },
        **errors(
            409,
            422,
            429,
            why={
                409: "the Idempotency-Key was used with another body",
                422: "invalid input, or a URL to a blocked network; `loc` names the field",
            },
        ),
    },
)
async def register_watch(
    body: WatchCreate,
    store: StoreDep,
    tenant: TenantDep,
    settings: SettingsDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="repeat a request safely: same key and body give the same watch",
        ),
    ] = None,
) -> Response:
    """Register a job to watch; workers poll its `status_url` until it ends."""
    _refuse_blocked_urls(body, settings)
    spec = body.spec()
    # Before the headers are sealed (a new token each time): a replay has the same fingerprint.
    fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    if body.upstream is not None:
        spec["upstream"] = _stored_upstream(body.upstream, settings)
    doc, created = await store.register(
        tenant,
        spec,
        body.policy.max_wait_time,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )
    if created:
        WATCHES_REGISTERED.inc()
    watch = watch_json(doc)  # WatchCreated's fields, in its order
    if body.callback:  # (without it, no `callback_url` at all: response_model_exclude_unset)
        base = settings.public_url or str(request.base_url).rstrip("/")
        watch["callback_url"] = await _callback_url(store, doc["id"], base)
    return json_answer(watch, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


async def _callback_url(store: Store, watch_id: str, base: str) -> str | None:
    """A new push-callback URL of the watch: 128 random bits, stored only as a SHA-256 hash
    (routes/callbacks.py); None when the watch takes no more (ended, or has the most)."""
    token = secrets.token_urlsafe(16)
    if not await store.add_callback_token(watch_id, callback_token_hash(token)):
        return None
    return f"{base}/v1/callbacks/{watch_id}/{token}"


def callback_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stored_upstream(upstream: UpstreamSpec, settings: Settings) -> dict[str, Any]:
    """The `upstream` the spec keeps: checked (a 422 names the field), defaults left out, the
    headers sealed under VTW_SECRET_KEYS (a 422 says what to set when nothing can seal them)."""
    try:
        upstream.upstream()
    except UpstreamSpecError as exc:
        raise _invalid(("upstream", *_loc(exc.field)), exc.reason) from None
    stored = upstream.model_dump(mode="json", exclude_defaults=True)
    headers = stored.pop("headers", None)
    if headers:
        sealer = Sealer.from_settings(settings)
        if sealer is None:
            raise _invalid(("upstream", "headers"), NOT_CONFIGURED_DETAIL)
        stored[SEALED_HEADERS] = sealer.seal(headers)
        stored[HEADER_NAMES] = list(headers)
    return stored


def _loc(field: str) -> list[str | int]:
    """`upstream.rules[2].path` as a 422's loc after `upstream`: rules, 2, path (and
    `upstream.headers.<name>`: headers, the name as it is)."""
    parts: list[str | int] = []
    if field.startswith("upstream.headers."):  # a header's name may hold "." or "[" itself
        return ["headers", field.removeprefix("upstream.headers.")]
    for part in field.split(".")[1:]:
        name, _, index = part.partition("[")
        parts.append(name)
        if index.rstrip("]").isdigit():
            parts.append(int(index.rstrip("]")))
    return parts


def _invalid(loc: tuple[str | int, ...], why: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": why}])


def _refuse_blocked_urls(body: WatchCreate, settings: Settings) -> None:
    errors = []
    for field in ("status_url", "webhook_url"):
        url = getattr(body, field)
        why = blocked_literal(str(url), settings.allowed_networks) if url else None
        if why:
            loc = ("body", field)
            errors.append({"type": "value_error", "loc": loc, "msg": why, "input": str(url)})
    if errors:
        raise RequestValidationError(errors)


# The watch routes answer `codec.watch_json` as it is (`json_answer`): it is the JSON of `Watch`,
# the model each declares for the OpenAPI document, which would only validate and serialise it
# again (bench/api.py).


@router.get("/watches/{watch_id}", response_model=Watch, responses=NOT_FOUND)
async def get_watch(watch_id: WatchId, store: StoreDep, tenant: TenantDep) -> Response:
    return json_answer(watch_json(await store.get(tenant, watch_id)))


@router.get("/watches", response_model=WatchPage)
async def list_watches(
    store: StoreDep,
    tenant: TenantDep,
    state: Annotated[WatchState | None, Query(description="only watches in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="`next_cursor` of a page")
    ] = None,
) -> Response:
    """The tenant's watches, newest first."""
    page = await store.page(tenant, state, limit, cursor)
    items = [watch_json(doc) for doc in page.docs]
    return json_answer({"items": items, "next_cursor": page.next_cursor})


@router.delete(
    "/watches/{watch_id}",
    response_model=Watch,
    responses={**NOT_FOUND, **errors(409, why={409: "the watch has already ended"})},
)
async def cancel_watch(watch_id: WatchId, store: StoreDep, tenant: TenantDep) -> Response:
    """Stop watching; the watch ends as `cancelled` (no webhook is sent)."""
    doc = await store.cancel(tenant, watch_id)
    WATCHES_FINISHED.labels(WatchState.CANCELLED.value).inc()
    return json_answer(watch_json(doc))


@router.get("/presets", tags=["upstreams"])
async def list_presets(tenant: TenantDep) -> dict[str, Preset]:
    """The presets an `upstream` may name, each with its rules and hints, the body it
    assumes and the provider documentation it follows (docs/upstreams.md)."""
    return PRESETS


@router.get("/status", response_model=StatusSummary)
async def aggregated_status(store: StoreDep, tenant: TenantDep) -> Response:
    """Counts of the tenant's watches by state, and of their webhooks; the budget and breaker
    of each upstream host its watches polled lately (only those: the fleet-wide state of a
    host the tenant uses, never which hosts other tenants use)."""
    counts, hosts = await asyncio.gather(store.counts(tenant), store.hosts.of_tenant(tenant))
    return json_answer(summary_json(counts, hosts))
