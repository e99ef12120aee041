"""The webhook dispatcher: delivers each terminal event from the outbox, signed, at least once.

2xx is success; redirects are not followed (a 3xx is a failure); 410 stops delivery; 429 and 503
honour `Retry-After` within [d, 2d] of the scheduled delay d; other failures retry on the
configured schedule with ±20 % jitter, then the delivery is `failed` until a manual retry.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from client.upstream import describe_exception, parse_retry_after
from client.webhooks import signature_header
from service.domain import WebhookState
from service.models import render_watch, timestamp
from service.outbox import Outbox, Outcome
from service.settings import Settings
from service.store import Claimed

from .loop import ClaimLoop, HostLimits

logger = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 64 * 1024
SCHEDULE_JITTER = 0.2


def event_body(doc: dict[str, Any]) -> bytes:
    """The webhook payload: `{"type": "watch.<state>", "timestamp": ..., "data": <Watch>}`.

    The data is the watch as it ended, so every attempt sends the same bytes (one event, one
    `webhook-id`, one body): the delivery's own progress (attempts, last status code) is left
    out, as it was when the event was queued.
    """
    as_ended = {"state": WebhookState.PENDING.value, "attempts": 0, "last_status_code": None}
    watch = render_watch({**doc, "webhook": as_ended})
    finished = timestamp(doc["finished_at"])
    event = {
        "type": f"watch.{watch.state.value}",
        "timestamp": finished.isoformat().replace("+00:00", "Z") if finished else None,
        "data": watch.model_dump(mode="json"),
    }
    return json.dumps(event, separators=(",", ":")).encode()


def decide(
    status_code: int | None,
    retry_after: float | None,
    cycle_attempt: int,
    schedule: tuple[float, ...],
    rng: random.Random,
) -> tuple[Outcome, float]:
    """What follows attempt number `cycle_attempt` (1-based) of this delivery cycle."""
    if status_code is not None and 200 <= status_code < 300:
        return "delivered", 0.0
    if status_code == 410 or cycle_attempt > len(schedule):
        return "failed", 0.0
    scheduled = schedule[cycle_attempt - 1]
    delay = scheduled * rng.uniform(1 - SCHEDULE_JITTER, 1 + SCHEDULE_JITTER)
    if status_code in (429, 503) and retry_after is not None:
        delay = min(max(retry_after, scheduled), 2 * scheduled)
    return "retry", delay


class Dispatcher(ClaimLoop):
    name = "dispatcher"
    idle_sleep = 0.25  # webhooks go out within a quarter second of the terminal state

    def __init__(
        self,
        outbox: Outbox,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        # A lease outlives the longest attempt, so a live dispatcher never loses one mid-request.
        super().__init__(
            settings.worker_concurrency,
            max(settings.lease_seconds, 2 * settings.webhook_timeout + 5),
        )
        self.outbox = outbox
        self.session = session
        self.settings = settings
        self.rng = rng or random.Random()
        self.host_limits = HostLimits(settings.per_host_concurrency)

    async def claim(self, limit: int) -> Any:
        return await self.outbox.claim(limit, self.lease_seconds)

    async def handle(self, claimed: Claimed) -> None:
        doc = claimed.doc
        url = json.loads(doc["spec"])["webhook_url"]
        current, previous = await self.outbox.secrets(doc["tenant"])
        body = event_body(doc)
        msg_id = f"msg_{claimed.id}"
        sent_at = int(time.time())
        live = [current] if previous is None else [current, previous]
        headers = {
            "content-type": "application/json",
            "user-agent": "vtwatch-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(sent_at),
            "webhook-signature": signature_header(live, msg_id, sent_at, body),
        }
        host = urlsplit(url).netloc
        status_code, retry_after, error, latency_ms = await self.host_limits.run(
            host, lambda: self._post(url, body, headers)
        )
        cycle_attempt = doc["webhook"].get("cycle_attempts", 0) + 1
        outcome, delay = decide(
            status_code, retry_after, cycle_attempt, self.settings.webhook_retry_schedule, self.rng
        )
        attempt = {"status_code": status_code, "error": error, "latency_ms": latency_ms}
        saved = await self.outbox.record_attempt(claimed, attempt, outcome, delay)
        logger.info(
            "webhook %s to %s: %s (%s, %d ms)%s",
            msg_id,
            host,
            outcome,
            status_code if status_code is not None else error,
            latency_ms,
            "" if saved else " - lease lost, not recorded",
        )

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, float | None, str | None, int]:
        started = time.monotonic()
        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
            ) as response:
                await response.content.read(MAX_RESPONSE_BYTES)
                code = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                error = None if 200 <= code < 300 else f"HTTP {code}"
                return code, retry_after, error, int((time.monotonic() - started) * 1000)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return None, None, describe_exception(exc), int((time.monotonic() - started) * 1000)
