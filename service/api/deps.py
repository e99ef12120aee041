"""FastAPI dependencies: settings, the store and the caller's tenant, from the lifespan state.

The store and the outbox are handed out only once the store's partition count is known to be
this process's `VTW_PARTITIONS` (`PartitionCheck`): a process started while Redis was down
checks it before its first request touches the store, so a misconfigured pod answers `503`, never
a `201` for a watch no worker would claim.

Every dependency is `async def`, however little it does: FastAPI runs a plain `def` one in a
worker thread, a thread hop per dependency per request (a third of a `GET /v1/watches/{id}`'s
time in the API process before, bench/api.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import PartitionsMismatch
from ..settings import Settings
from ..store.outbox import Outbox
from ..store.pubsub import EventHub
from ..store.watches import Store
from .auth import tenant_for
from .middleware import TENANT_SCOPE_KEY

logger = logging.getLogger(__name__)


class PartitionCheck:
    """`Store.check_partitions`, until it passes once: the success is kept (no request checks
    again), a failure is not (the next caller checks again). Concurrent callers share one
    check in flight, so a burst on a fresh process sends its two commands once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.passed = False
        self._check: asyncio.Task[None] | None = None
        self._mismatch_logged = False

    async def ensure(self) -> None:
        """Return once the counts match; raise `PartitionsMismatch`, or the Redis error that
        kept the check from being made."""
        if self.passed:
            return
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self.store.check_partitions())
            self._check.add_done_callback(_retrieve)
        try:
            await asyncio.shield(self._check)
        except PartitionsMismatch as exc:
            if not self._mismatch_logged:  # once: readiness probes would repeat it every second
                self._mismatch_logged = True
                logger.error("the store cannot be used: %s", exc)
            raise
        self.passed = True

    async def aclose(self) -> None:
        if self._check is not None and not self._check.done():
            self._check.cancel()
            await asyncio.wait([self._check])


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a check's error as seen (its callers may all have left)."""
    if not task.cancelled():
        task.exception()


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_partition_check(request: Request) -> PartitionCheck:
    check: PartitionCheck = request.app.state.partition_check
    return check


async def get_store(request: Request) -> Store:
    await request.app.state.partition_check.ensure()
    store: Store = request.app.state.store
    return store


async def get_outbox(request: Request) -> Outbox:
    await request.app.state.partition_check.ensure()
    outbox: Outbox = request.app.state.outbox
    return outbox


async def get_events(request: Request) -> EventHub:
    hub: EventHub = request.app.state.events
    return hub


SettingsDep = Annotated[Settings, Depends(get_settings)]
EventsDep = Annotated[EventHub, Depends(get_events)]
StoreDep = Annotated[Store, Depends(get_store)]
OutboxDep = Annotated[Outbox, Depends(get_outbox)]
PartitionCheckDep = Annotated[PartitionCheck, Depends(get_partition_check)]


bearer = HTTPBearer(
    auto_error=False,
    description="an API key of `VTW_API_KEYS`; not needed when the service runs open (loopback)",
)


async def get_tenant(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """The tenant `middleware.Authenticate` resolved before the body was read (resolved here for a
    route off `/v1/`). `_bearer` only declares the scheme in the OpenAPI document. (The settings
    are read here, not depended on: a sub-dependency costs every request its solving.)"""
    tenant = request.scope.get(TENANT_SCOPE_KEY)
    if isinstance(tenant, str):
        return tenant
    settings: Settings = request.app.state.settings
    return tenant_for(request.headers.get("authorization"), settings)


TenantDep = Annotated[str, Depends(get_tenant)]
