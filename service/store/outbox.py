"""The webhook side of the store: the outbox of terminal events, delivery attempts, secrets.

The outbox is a leased schedule (watch id -> when its webhook is due) filled by `finish.lua` in
the same step as the terminal state. Dispatchers lease entries like the poller leases watches.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis.asyncio as aioredis

from client.webhooks import new_secret

from ..errors import WatchConflict, WatchNotFound
from .connection import retry_idempotent
from .keys import Keys
from .queue import Claimed, LeasedQueue
from .replication import Replication
from .scripts import load_scripts, server_time_ms

SCRIPTS = ("deliver", "redeliver", "rotate")
ROTATION_GRACE_SECONDS = 24 * 3600
MAX_OLD_SECRETS = 10  # rotated-out secrets that still sign (each adds a signature to a webhook)
DELIVERY_LOG_LENGTH = 100
OLD_SECRET = "old:"
Outcome = Literal["delivered", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class Secrets:
    """A tenant's signing secrets: the current one, and those rotated out that still sign
    (newest first)."""

    current: str
    previous: list[str]

    @property
    def live(self) -> list[str]:
        return [self.current, *self.previous]


class Outbox:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str = "vtw",
        partitions: int = 1,
        replication: Replication | None = None,
    ) -> None:
        self.redis = redis
        self.keys = Keys(namespace, partitions)
        self.replication = replication or Replication(redis)
        self._scripts = load_scripts(redis, SCRIPTS)
        self.queue = LeasedQueue(redis, self.keys, "outbox", self.replication)

    async def record_attempt(
        self,
        claimed: Claimed,
        attempt: dict[str, Any],
        outcome: Outcome,
        delay_seconds: float = 0.0,
    ) -> bool:
        """Log an attempt and move the delivery on (delivered, failed, or retry after a delay);
        False when the lease was lost (nothing recorded)."""
        part, tenant = self.keys.of(claimed.id), claimed.doc["tenant"]
        code = attempt.get("status_code")
        done = await self.replication.run(
            self._scripts["deliver"],
            [
                part.outbox,
                part.outbox_leases,
                part.watch(claimed.id),
                part.deliveries(claimed.id),
                part.counts(tenant),
            ],
            [
                claimed.id,
                claimed.token,
                json.dumps(attempt),
                outcome,
                int(delay_seconds * 1000),
                "" if code is None else code,
                DELIVERY_LOG_LENGTH,
                self.keys.events_prefix,
            ],
            durable=outcome == "delivered",
        )
        return bool(done)

    async def attempts(self, watch_id: str) -> list[dict[str, Any]]:
        raws = cast(list[str], await self.redis.lrange(self.keys.deliveries(watch_id), 0, -1))
        return [json.loads(raw) for raw in raws]

    async def redeliver(self, tenant: str, watch_id: str) -> None:
        """Queue the watch's terminal webhook again, due now (after the attempt in flight, if
        one is)."""
        part = self.keys.of(watch_id)
        outcome = await retry_idempotent(
            lambda: self._scripts["redeliver"](
                keys=[part.watch(watch_id), part.outbox, part.outbox_leases, part.counts(tenant)],
                args=[watch_id, tenant, self.keys.events_prefix],
            )
        )
        if outcome == "missing":
            raise WatchNotFound(watch_id)
        if outcome == "not_ended":
            raise WatchConflict(watch_id, "has not ended yet: its webhook is sent when it does")
        if outcome == "no_webhook":
            raise WatchConflict(watch_id, "has no webhook_url")

    async def secrets(self, tenant: str) -> Secrets:
        """The tenant's live signing secrets; the current one is created on first use."""
        key = self.keys.secret(tenant)
        stored = cast(dict[str, str], await self.redis.hgetall(key))
        if "current" not in stored:  # a read stays a read (it works on a read-only Redis)
            await self.redis.hsetnx(key, "current", new_secret())
            stored = cast(dict[str, str], await self.redis.hgetall(key))
        now = await server_time_ms(self.redis)
        retiring = sorted(
            (
                (int(until), name.removeprefix(OLD_SECRET))
                for name, until in stored.items()
                if name.startswith(OLD_SECRET) and int(until) > now
            ),
            reverse=True,
        )
        return Secrets(stored["current"], [secret for _, secret in retiring])

    async def rotate_secret(self, tenant: str) -> Secrets:
        """A new current secret; every secret rotated out signs on for 24 h (safe to repeat)."""
        args: list[str | int] = [
            new_secret(),
            ROTATION_GRACE_SECONDS * 1000,
            secrets.token_hex(8),
            MAX_OLD_SECRETS,
        ]
        keys = [self.keys.secret(tenant)]
        await retry_idempotent(lambda: self._scripts["rotate"](keys=keys, args=args))
        return await self.secrets(tenant)
