"""The v1 webhook endpoints: delivery attempts, manual retry, the signing secret."""

from __future__ import annotations

from fastapi import APIRouter, status

from ...store.outbox import Secrets
from ..deps import OutboxDep, StoreDep, TenantDep
from ..responses import errors
from ..schemas import Deliveries, WebhookSecret, render_attempt
from .watches import NOT_FOUND, WatchId

router = APIRouter(prefix="/v1", tags=["webhooks"], responses=errors(401, 413, 422, 503))


@router.get("/watches/{watch_id}/deliveries", responses=NOT_FOUND)
async def list_deliveries(
    watch_id: WatchId, store: StoreDep, outbox: OutboxDep, tenant: TenantDep
) -> Deliveries:
    """Every attempt to deliver the watch's webhook, oldest first (the last 100)."""
    await store.get(tenant, watch_id)
    return Deliveries(items=[render_attempt(a) for a in await outbox.attempts(watch_id)])


@router.post(
    "/watches/{watch_id}/deliveries/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **NOT_FOUND,
        **errors(409, why={409: "the watch has not ended, or has no webhook_url"}),
    },
)
async def retry_delivery(watch_id: WatchId, outbox: OutboxDep, tenant: TenantDep) -> None:
    """Send the terminal webhook again, on a fresh retry schedule (same `webhook-id`)."""
    await outbox.redeliver(tenant, watch_id)


@router.get("/webhook-secret")
async def get_webhook_secret(outbox: OutboxDep, tenant: TenantDep) -> WebhookSecret:
    """The tenant's signing secret (created on first use)."""
    return render_secrets(await outbox.secrets(tenant))


@router.post("/webhook-secret/rotate")
async def rotate_webhook_secret(outbox: OutboxDep, tenant: TenantDep) -> WebhookSecret:
    """A new signing secret; every secret rotated out keeps signing for 24 hours."""
    return render_secrets(await outbox.rotate_secret(tenant))


def render_secrets(secrets: Secrets) -> WebhookSecret:
    previous = secrets.previous[0] if secrets.previous else None
    return WebhookSecret(secret=secrets.current, previous=previous)
