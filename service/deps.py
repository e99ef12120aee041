"""FastAPI dependencies: settings, the store and the caller's tenant, from the lifespan state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .auth import tenant_for
from .outbox import Outbox
from .settings import Settings
from .store import Store


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]


def get_tenant(request: Request, settings: SettingsDep) -> str:
    return tenant_for(request, settings)


TenantDep = Annotated[str, Depends(get_tenant)]
