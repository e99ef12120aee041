"""FastAPI dependencies: settings, the store and the caller's tenant, from the lifespan state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..settings import Settings
from ..store.outbox import Outbox
from ..store.watches import Store
from .auth import tenant_for
from .gate import TENANT_SCOPE_KEY
from .sse import EventHub


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


def get_events(request: Request) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


SettingsDep = Annotated[Settings, Depends(get_settings)]
EventsDep = Annotated[EventHub, Depends(get_events)]
StoreDep = Annotated[Store, Depends(get_store)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]


bearer = HTTPBearer(
    auto_error=False,
    description="an API key of `VTW_API_KEYS`; not needed when the service runs open (loopback)",
)


def get_tenant(
    request: Request,
    settings: SettingsDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The tenant `gate.Authenticate` resolved before the body was read (resolved here for a
    route off `/v1/`). `_bearer` only declares the scheme in the OpenAPI document."""
    tenant = request.scope.get(TENANT_SCOPE_KEY)
    if isinstance(tenant, str):
        return tenant
    return tenant_for(request.headers.get("authorization"), settings)


TenantDep = Annotated[str, Depends(get_tenant)]
