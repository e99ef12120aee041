"""The webhook dispatcher: delivers each terminal event from the outbox, signed, at least once.

2xx is success, decided by the status line alone (the body is drained for a second at most,
never waited for); redirects are not followed (a 3xx is a failure); 410 and a receiver the SSRF
guard refuses stop delivery; 429 and 503 honour `Retry-After` within [d, 2d] of the scheduled
delay d; other failures retry on the configured schedule with ±20 % jitter, then the delivery is
`failed` until a manual retry.

Every POST (retries and manual resends included) first takes a token of its receiver host's
fleet-wide budget (`VTW_WEBHOOK_HOST_RATE_LIMIT`), shared fairly between tenants (`budget.py`,
kind "r"): one that is refused goes back to the outbox until its token is due, in line with the
others refused, without spending an attempt or moving the retry schedule; so does one whose
budget could not be taken (a store error: no POST without it), after a backoff.

A POST starts only on a lease confirmed for its whole timeout: whatever needs Redis is done
first, and nothing is awaited between the confirmation and the POST (`_send`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass

import aiohttp

from client.upstream import DestinationRefused, describe_exception, parse_retry_after
from client.webhooks import signature_header
from service.domain import WatchDoc, WebhookState
from service.logs import watch_fields
from service.metrics import (
    NOTIFY_LATENCY,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_DURATION,
    WEBHOOKS_DEFERRED,
)
from service.settings import Settings
from service.store.codec import iso_time, watch_json
from service.store.hosts import HostBook
from service.store.outbox import Outbox, Outcome
from service.store.queue import Claimed

from .budget import HostBudget, receiver_policy_of
from .loop import ClaimLoop, Deferred, LeaseLost
from .partitions import Assignment
from .retry import FailureStreak
from .spec import SpecCache

logger = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0  # for a body after its status line, which alone decides
SCHEDULE_JITTER = 0.2
RECEIVER_PORT = 0  # a receiver's budget is its host's, every port's: one entry per tenant
DEFERRED = {
    reason: WEBHOOKS_DEFERRED.labels(reason)
    for reason in ("budget", "budget_unavailable", "host_share")
}


@dataclass(frozen=True, slots=True)
class Sent:
    """How one delivery attempt went."""

    status_code: int | None
    retry_after: float | None
    error: str | None
    latency_ms: int
    refused: bool = False  # the SSRF guard refused the receiver's address


def event_body(doc: WatchDoc) -> bytes:
    """The webhook payload: `{"type": "watch.<state>", "timestamp": ..., "data": <Watch>}`.

    The data is the watch as it ended, so every attempt sends the same bytes (one event, one
    `webhook-id`, one body): the delivery's own progress (attempts, last status code) is left
    out, as it was when the event was queued.
    """
    as_ended = {"state": WebhookState.PENDING.value, "attempts": 0, "last_status_code": None}
    watch = watch_json({**doc, "webhook": as_ended})
    event = {
        "type": f"watch.{watch['state']}",
        "timestamp": iso_time(doc["finished_at"]),
        "data": watch,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def decide(
    status_code: int | None,
    retry_after: float | None,
    cycle_attempt: int,
    schedule: tuple[float, ...],
    rng: random.Random,
    *,
    refused: bool = False,
) -> tuple[Outcome, float]:
    """What follows attempt number `cycle_attempt` (1-based) of this delivery cycle."""
    if status_code is not None and 200 <= status_code < 300:
        return "delivered", 0.0
    if status_code == 410 or refused or cycle_attempt > len(schedule):
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
        assignment: Assignment | None = None,
    ) -> None:
        # A POST starts only on a lease confirmed for its whole timeout (see `_send`): a lease
        # of twice the timeout leaves the keeper room to confirm it between its ticks.
        super().__init__(
            outbox.queue,
            settings.worker_concurrency,
            max(settings.lease_seconds, 2 * settings.webhook_timeout),
            settings.per_host_concurrency,
            assignment,
        )
        self.outbox = outbox
        self.session = session
        self.settings = settings
        self.rng = rng or random.Random()
        self.specs = SpecCache(settings.min_poll_interval)  # no sealer: it needs no credentials
        self.budget = HostBudget(
            HostBook(outbox.redis, outbox.keys),
            receiver_policy_of(settings),
            self.rng,
            kind="r",
            name=self.name,
        )
        self._budget_failures = FailureStreak(f"{self.name}: taking receiver budgets", logger)

    async def handle(self, claimed: Claimed) -> None:
        doc = claimed.doc
        spec = self.specs.get(doc["spec"])
        if spec.webhook_url is None or spec.webhook_host is None:
            # finish.lua queues only watches with a webhook_url: fail a stray entry for good.
            await self._record(claimed, Sent(None, None, "no webhook_url", 0), "failed", 0.0)
            return
        url, body = spec.webhook_url, event_body(doc)
        try:
            async with self.host_slot(spec.webhook_host):
                sent = await self._send(claimed, spec.webhook_host, url, body)
        except Deferred as deferred:  # no POST: the delivery goes back to the outbox
            DEFERRED[deferred.reason].inc()
            raise
        outcome, delay = decide(
            sent.status_code,
            sent.retry_after,
            doc["webhook"]["cycle_attempts"] + 1,
            self.settings.webhook_retry_schedule,
            self.rng,
            refused=sent.refused,
        )
        await self._record(claimed, sent, outcome, delay)
        WEBHOOK_ATTEMPTS.labels(outcome).inc()
        WEBHOOK_DURATION.observe(sent.latency_ms / 1000)
        finished_at, webhook = doc["finished_at"], doc["webhook"]
        first_cycle = webhook["cycle_attempts"] == webhook["attempts"]  # no manual resend
        if outcome == "delivered" and finished_at is not None and first_cycle:
            NOTIFY_LATENCY.observe(max(0, self.server_now_ms() - finished_at) / 1000)

    async def _send(self, claimed: Claimed, host: str, url: str, body: bytes) -> Sent:
        """Sign and POST, once a host slot is ours. Everything that needs Redis (the receiver
        host's token, the secrets) comes first; then the lease is confirmed for the whole
        timeout, the timestamp (Redis time) taken, and the POST started, with no await in
        between: a pause of this process (GC, SIGSTOP, a slow Redis) before the confirmation is
        seen by it, so a lease that passed to another worker meanwhile sends nothing."""
        await self._admit(claimed.doc["tenant"], host)
        secrets = await self.outbox.secrets(claimed.doc["tenant"])
        if not await self.keeper.confirm(claimed, margin=self.settings.webhook_timeout):
            raise LeaseLost(claimed.id)
        msg_id = f"msg_{claimed.id}"
        sent_at = self.server_now_ms() // 1000
        headers = {
            "content-type": "application/json",
            "user-agent": "vtwatch-webhooks/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(sent_at),
            "webhook-signature": signature_header(secrets.live, msg_id, sent_at, body),
        }
        return await self._post(url, body, headers)

    async def _admit(self, tenant: str, host: str) -> None:
        """Take one POST of `tenant` to `host` from the receiver's budget (tokens taken ahead
        first, without a round trip), else put the delivery off (`Deferred`): until its token is
        due, or, when the budget could not be taken, after a backoff."""
        try:
            admission = self.budget.spend_credit(
                host, RECEIVER_PORT, tenant
            ) or await self.budget.ask(host, RECEIVER_PORT, tenant)
        except Exception as exc:  # no budget known: no POST (the store is likely failing)
            raise Deferred(self._budget_failures.failed(exc), "budget_unavailable") from None
        self._budget_failures.succeeded()
        if not admission.go:
            raise Deferred(admission.wait_seconds, admission.reason)

    async def _record(self, claimed: Claimed, sent: Sent, outcome: Outcome, delay: float) -> None:
        attempt = {
            "status_code": sent.status_code,
            "error": sent.error,
            "latency_ms": sent.latency_ms,
        }
        # deliver.lua is fenced and drops the lease: running it twice records the attempt once.
        saved = await self.write_while_held(
            claimed, lambda: self.outbox.record_attempt(claimed, attempt, outcome, delay)
        )
        logger.info(
            "webhook of %s: %s (%s, %d ms)%s",
            claimed.id,
            outcome,
            sent.status_code if sent.status_code is not None else sent.error,
            sent.latency_ms,
            "" if saved else " - lease lost, not recorded",
            extra=watch_fields(claimed.doc, claimed.doc["webhook"]["attempts"] + 1),
        )

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Sent:
        """The status line is the answer; the body is only drained after it (`_drain`), and
        nothing after the status line (a stalled body, a reset) can undo a 2xx."""
        started = time.monotonic()
        answer: Sent | None = None

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            async with self.session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
            ) as response:
                code = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                error = None if 200 <= code < 300 else f"HTTP {code}"
                answer = Sent(code, retry_after, error, elapsed_ms())
                await _drain(response)
                return answer
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, DestinationRefused)
            error = exc.os_error.strerror if refused else describe_exception(exc)
            return Sent(None, None, error, elapsed_ms(), refused=refused)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            if answer is not None:  # the exchange failed only after its status line
                return answer
            return Sent(None, None, describe_exception(exc), elapsed_ms())


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a short body, so the connection can serve the next webhook to this host: at most
    `MAX_RESPONSE_BYTES` within `DRAIN_SECONDS` (the attempt record keeps none of it). Whatever
    the body does (stalls, is cut off, never ends), the answer already stands."""
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            left = MAX_RESPONSE_BYTES
            while left > 0 and not response.content.at_eof():
                chunk = await response.content.read(left)
                if not chunk:
                    return
                left -= len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        pass  # the connection is closed on release instead of reused
