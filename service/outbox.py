"""The webhook side of the store: the outbox of terminal events, delivery attempts, secrets.

The outbox is a ZSET (watch id -> when its webhook is due) filled by `finish.lua` in the same
step as the terminal state. Dispatchers lease entries with the same `claim.lua` as the poller.
"""

from __future__ import annotations

import json
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from client.webhooks import new_secret

from .errors import WatchConflict, WatchNotFound
from .keys import Keys
from .store import Claim, Claimed, load_scripts, parse_claim, server_time_ms

SCRIPTS = ("claim", "deliver", "redeliver", "rotate")
ROTATION_GRACE_SECONDS = 24 * 3600
DELIVERY_LOG_LENGTH = 100
Outcome = Literal["delivered", "failed", "retry"]


class Outbox:
    def __init__(self, redis: aioredis.Redis, *, namespace: str = "vtw") -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self._scripts = load_scripts(redis, SCRIPTS)

    async def claim(self, limit: int, lease_seconds: float) -> Claim:
        reply = await self._scripts["claim"](
            keys=[self.keys.outbox],
            args=[self.keys.watch_prefix, limit, int(lease_seconds * 1000)],
        )
        return parse_claim(reply)

    async def record_attempt(
        self,
        claimed: Claimed,
        attempt: dict[str, Any],
        outcome: Outcome,
        delay_seconds: float = 0.0,
    ) -> bool:
        """Log an attempt and move the delivery on (delivered, failed, or retry after a delay)."""
        k, tenant = self.keys, claimed.doc["tenant"]
        code = attempt.get("status_code")
        done = await self._scripts["deliver"](
            keys=[k.outbox, k.watch(claimed.id), k.deliveries(claimed.id), k.counts(tenant)],
            args=[
                claimed.id,
                claimed.token,
                json.dumps(attempt),
                outcome,
                int(delay_seconds * 1000),
                "" if code is None else code,
                DELIVERY_LOG_LENGTH,
            ],
        )
        return bool(done)

    async def attempts(self, watch_id: str) -> list[dict[str, Any]]:
        raws = cast(list[str], await self.redis.lrange(self.keys.deliveries(watch_id), 0, -1))
        return [json.loads(raw) for raw in raws]

    async def redeliver(self, tenant: str, watch_id: str) -> None:
        """Queue the watch's terminal webhook again."""
        k = self.keys
        outcome = await self._scripts["redeliver"](
            keys=[k.watch(watch_id), k.outbox, k.counts(tenant)], args=[watch_id, tenant]
        )
        if outcome == "missing":
            raise WatchNotFound(watch_id)
        if outcome == "not_ended":
            raise WatchConflict(watch_id, "has not ended yet: its webhook is sent when it does")
        if outcome == "no_webhook":
            raise WatchConflict(watch_id, "has no webhook_url")

    async def secrets(self, tenant: str) -> tuple[str, str | None]:
        """The tenant's (current, previous-if-still-live) signing secrets; created on first use."""
        key = self.keys.secret(tenant)
        await self.redis.hsetnx(key, "current", new_secret())
        stored = cast(dict[str, str], await self.redis.hgetall(key))
        previous = stored.get("previous")
        until = int(stored.get("previous_until", 0))
        if previous is not None and until <= await server_time_ms(self.redis):
            previous = None  # its 24 h of grace are over
        return stored["current"], previous

    async def rotate_secret(self, tenant: str) -> tuple[str, str | None]:
        await self._scripts["rotate"](
            keys=[self.keys.secret(tenant)], args=[new_secret(), ROTATION_GRACE_SECONDS * 1000]
        )
        return await self.secrets(tenant)
