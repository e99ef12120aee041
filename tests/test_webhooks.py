"""Webhooks (DESIGN.md "Webhooks", Standard Webhooks v1): signatures, the dispatcher's decisions,
the payload, and the whole path in one process (API + worker + upstream simulator + a receiver
on loopback) including the receiver's faults: down, 5xx storms, slow, redirects, 410, and the
dead letter with its manual retry.

The receiver verifies every webhook it gets with PyPI's `standardwebhooks` (the reference
verifier) and the secret(s) from `GET /v1/webhook-secret`; it answers 400 to a bad signature, so
nothing unverified can count as delivered.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import fakeredis
import httpx
import pytest
import standardwebhooks
from aiohttp import web

from client import webhooks
from client.simulator import SimulatorConfig
from client.simulator import create_app as create_simulator
from client.ssrf import guarded_connector
from client.webhooks import WebhookVerificationError, sign, signature_header, verify
from service.api.app import create_app
from service.api.schemas import Watch, WatchCreate
from service.settings import Settings
from service.store.keys import Keys
from service.store.outbox import Outbox
from worker.dispatcher import SCHEDULE_JITTER, Dispatcher, decide, event_body
from worker.process import Worker

T = TypeVar("T")

# The Standard Webhooks test vector (ANCHORS.md).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers_for(msg_id: str, timestamp: int, signature: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


# -- signing and verifying ---------------------------------------------------------------------


def test_sign_reproduces_the_standard_webhooks_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = headers_for(VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_SIGNATURE)
    verify(VECTOR_SECRET, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10)


def test_the_reference_library_agrees_on_the_test_vector() -> None:
    reference = standardwebhooks.Webhook(VECTOR_SECRET)
    moment = datetime.fromtimestamp(VECTOR_TIMESTAMP, tz=UTC)
    assert reference.sign(VECTOR_ID, moment, VECTOR_BODY.decode()) == VECTOR_SIGNATURE


def test_verify_accepts_what_sign_makes_and_the_reference_accepts_it_too() -> None:
    secret = webhooks.new_secret()
    body = b'{"type":"watch.completed","data":{"id":"w_1"}}'
    now = int(time.time())
    headers = headers_for("msg_w_1", now, sign(secret, "msg_w_1", now, body))

    verify(secret, headers, body)
    assert standardwebhooks.Webhook(secret).verify(body, headers) == json.loads(body)


def test_verify_accepts_what_the_reference_library_signs() -> None:
    secret = webhooks.new_secret()
    body = '{"type":"watch.error","data":{"id":"w_2"}}'
    now = int(time.time())
    signature = standardwebhooks.Webhook(secret).sign(
        "msg_w_2", datetime.fromtimestamp(now, tz=UTC), body
    )

    verify(secret, headers_for("msg_w_2", now, signature), body.encode())


def test_new_secrets_follow_the_whsec_format() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 64
    assert webhooks.new_secret() != secret


def test_verify_reads_headers_case_insensitively() -> None:
    secret, now, body = webhooks.new_secret(), int(time.time()), b"{}"
    headers = {
        "Webhook-Id": "msg_x",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign(secret, "msg_x", now, body),
    }
    verify(secret, headers, body)


@pytest.mark.parametrize(
    "tamper",
    [
        "body",
        "id",
        "timestamp",
        "old",
        "future",
        "other-secret",
        "no-id",
        "no-timestamp",
        "no-signature",
        "bad-timestamp",
    ],
)
def test_verify_rejects_tampered_stale_or_incomplete_webhooks(tamper: str) -> None:
    secret, body, now = webhooks.new_secret(), b'{"a":1}', int(time.time())
    sent_at = {"old": now - 301, "future": now + 301}.get(tamper, now)
    headers = headers_for("msg_1", sent_at, sign(secret, "msg_1", sent_at, body))
    if tamper == "body":
        body = b'{"a":2}'
    elif tamper == "id":
        headers["webhook-id"] = "msg_2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    elif tamper == "other-secret":
        secret = webhooks.new_secret()
    elif tamper == "bad-timestamp":
        headers["webhook-timestamp"] = "yesterday"
    elif tamper.startswith("no-"):
        del headers[f"webhook-{tamper.removeprefix('no-')}"]

    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body)


def test_verify_tolerance_is_five_minutes_each_way() -> None:
    secret, body, sent_at = webhooks.new_secret(), b"{}", 1_700_000_000
    headers = headers_for("msg_1", sent_at, sign(secret, "msg_1", sent_at, body))

    verify(secret, headers, body, now=sent_at + 300)
    verify(secret, headers, body, now=sent_at - 300)
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body, now=sent_at + 301)
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, body, now=sent_at - 301)


def test_signature_header_carries_one_signature_per_live_secret() -> None:
    current, previous = webhooks.new_secret(), webhooks.new_secret()
    body, now = b'{"x":true}', int(time.time())

    value = signature_header([current, previous], "msg_r", now, body)

    parts = value.split(" ")
    assert parts == [sign(current, "msg_r", now, body), sign(previous, "msg_r", now, body)]
    assert all(part.startswith("v1,") for part in parts)
    headers = headers_for("msg_r", now, value)
    for secret in (current, previous):  # each secret alone verifies the message
        verify(secret, headers, body)
        standardwebhooks.Webhook(secret).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        verify(webhooks.new_secret(), headers, body)
    assert signature_header([current], "msg_r", now, body) == parts[0]


# -- the dispatcher's decisions ----------------------------------------------------------------

SCHEDULE = (5.0, 300.0, 1800.0)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("cycle_attempt", [1, 2, 4])  # 4: after the schedule, 2xx still wins
def test_decide_2xx_is_delivered(code: int, cycle_attempt: int) -> None:
    assert decide(code, None, cycle_attempt, SCHEDULE, random.Random(1)) == ("delivered", 0.0)


@pytest.mark.parametrize("cycle_attempt", [1, 2, 3])
def test_decide_410_fails_at_once(cycle_attempt: int) -> None:
    assert decide(410, 60.0, cycle_attempt, SCHEDULE, random.Random(1)) == ("failed", 0.0)


def test_decide_a_receiver_the_ssrf_guard_refuses_fails_at_once() -> None:
    assert decide(None, None, 1, (5.0, 300.0), random.Random(0), refused=True) == ("failed", 0.0)


async def test_a_blocked_receiver_is_reported_as_refused_not_retried() -> None:
    settings = Settings()
    async with aiohttp.ClientSession(connector=guarded_connector([])) as session:
        dispatcher = Dispatcher(
            Outbox(fakeredis.FakeAsyncRedis(decode_responses=True)), session, settings
        )
        sent = await dispatcher._post("http://127.0.0.2:9/hook", b"{}", {})
    assert sent.refused and sent.status_code is None
    assert sent.error is not None and sent.error.startswith("blocked by the SSRF guard")


@pytest.mark.parametrize("code", [None, 500, 503, 429, 404, 302, 400])
def test_decide_fails_once_the_schedule_is_exhausted(code: int | None) -> None:
    rng = random.Random(1)
    assert decide(code, 1.0, len(SCHEDULE) + 1, SCHEDULE, rng) == ("failed", 0.0)
    assert decide(code, None, len(SCHEDULE) + 5, SCHEDULE, rng) == ("failed", 0.0)
    assert decide(code, None, 1, (), rng) == ("failed", 0.0)  # an empty schedule: one attempt


@pytest.mark.parametrize("code", [429, 503])
@pytest.mark.parametrize(
    ("retry_after", "cycle_attempt", "expected"),
    [
        (0.0, 1, 5.0),  # below d: d
        (1.0, 1, 5.0),
        (7.5, 1, 7.5),  # within [d, 2d]: as asked
        (10.0, 1, 10.0),
        (3600.0, 1, 10.0),  # above 2d: 2d
        (100.0, 2, 300.0),  # the second retry's d is 300 s
        (450.0, 2, 450.0),
        (1e9, 3, 3600.0),
    ],
)
def test_decide_429_and_503_honour_retry_after_within_d_and_2d(
    code: int, retry_after: float, cycle_attempt: int, expected: float
) -> None:
    outcome, delay = decide(code, retry_after, cycle_attempt, SCHEDULE, random.Random(7))
    assert outcome == "retry"
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize("code", [None, 500, 502, 504, 404, 400, 302, 301, 418, 429, 503])
@pytest.mark.parametrize("cycle_attempt", [1, 2, 3])
def test_decide_other_failures_retry_on_the_schedule_with_20_percent_jitter(
    code: int | None, cycle_attempt: int
) -> None:
    """429/503 without a Retry-After are like any other failure."""
    scheduled = SCHEDULE[cycle_attempt - 1]
    rng = random.Random(code or 0)
    delays = []
    for _ in range(200):
        outcome, delay = decide(code, None, cycle_attempt, SCHEDULE, rng)
        assert outcome == "retry"
        delays.append(delay)

    low, high = scheduled * (1 - SCHEDULE_JITTER), scheduled * (1 + SCHEDULE_JITTER)
    assert SCHEDULE_JITTER == 0.2
    assert all(low <= d <= high for d in delays), (min(delays), max(delays))
    # The jitter is really there and spreads over the band, both sides of d.
    assert min(delays) < scheduled * 0.9 and max(delays) > scheduled * 1.1
    assert len(set(delays)) > 150


# -- the payload -------------------------------------------------------------------------------


def terminal_doc(state: str, reason: str | None = None) -> dict[str, Any]:
    created = 1_700_000_000_000
    spec = WatchCreate.model_validate(
        {
            "status_url": "http://translate-1:5000/status",
            "webhook_url": "https://caller.example/hooks",
            "metadata": {"video": "abc.mp4"},
        }
    ).spec()
    return {
        "id": "w_0123456789abcdef",
        "tenant": "acme",
        "spec": json.dumps(spec),
        "state": state,
        "reason": reason,
        "attempts": 4,
        "last_result": state if state != "timeout" else "pending",
        "last_error": None,
        "progress": 100.0 if state == "completed" else None,
        "created_at": created,
        "updated_at": created + 12_345,
        "last_polled_at": created + 12_345,
        "next_poll_at": None,
        "deadline": created + 3_600_000,
        "finished_at": created + 12_345,
        "webhook": {"state": "pending", "attempts": 0, "last_status_code": None},
    }


@pytest.mark.parametrize(
    ("state", "reason"),
    [("completed", None), ("error", "HTTP 404: job not found"), ("timeout", "deadline reached")],
)
def test_event_body_is_type_timestamp_and_the_watch(state: str, reason: str | None) -> None:
    doc = terminal_doc(state, reason)

    body = event_body(doc)

    event = json.loads(body)
    assert set(event) == {"type", "timestamp", "data"}
    assert event["type"] == f"watch.{state}"
    assert event["timestamp"] == "2023-11-14T22:13:32.345000Z"
    watch = Watch.model_validate(event["data"])  # the data is a whole Watch
    assert watch.id == doc["id"] and watch.state == state and watch.reason == reason
    assert watch.finished_at == datetime.fromisoformat(event["timestamp"])
    assert watch.webhook_url == "https://caller.example/hooks"
    assert watch.metadata == {"video": "abc.mp4"}
    assert "tenant" not in event["data"] and "spec" not in event["data"]
    assert body == json.dumps(event, separators=(",", ":")).encode()  # compact, as signed


def test_event_body_is_the_same_bytes_on_every_attempt() -> None:
    """One event, one body: the delivery's own progress does not leak into the payload."""
    doc = terminal_doc("completed")
    retried = terminal_doc("completed")
    retried["webhook"] = {
        "state": "failed",
        "attempts": 7,
        "cycle_attempts": 0,
        "last_status_code": 500,
    }

    assert event_body(retried) == event_body(doc)
    data = json.loads(event_body(doc))["data"]
    assert data["webhook"] == {"state": "pending", "attempts": 0, "last_status_code": None}


# -- in-process end to end ---------------------------------------------------------------------

LOOPBACK = "127.0.0.0/8,::1/128"
AS_A = {"Authorization": "Bearer key-a"}
AS_B = {"Authorization": "Bearer key-b"}
FAST_POLICY = {"initial_wait_time": 0.05, "jitter": 0.0, "max_wait_time": 60}
WAIT = 15.0  # seconds any expected state may take to show up


async def until(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = WAIT,
    alive: Callable[[], None] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if alive is not None:
            alive()
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Arrival:
    headers: dict[str, str]
    body: bytes
    at: float
    error: str | None  # why the signature did not verify


Reply = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


async def ok(n: int, request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def codes(*statuses: int, headers: dict[str, str] | None = None) -> Reply:
    """Answer the n-th request with statuses[n-1], then 200."""

    async def reply(n: int, request: web.Request) -> web.StreamResponse:
        if n <= len(statuses):
            return web.json_response({"n": n}, status=statuses[n - 1], headers=headers)
        return web.json_response({"ok": True})

    return reply


@dataclass
class Receiver:
    """A webhook receiver on loopback whose answers each test scripts with `reply`."""

    port: int = 0
    secrets: list[str] = field(default_factory=list)
    reply: Reply = ok
    arrivals: list[Arrival] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @property
    def ids(self) -> list[str]:
        return [a.headers["webhook-id"] for a in self.arrivals]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        error = None
        for secret in self.secrets:  # every live secret must verify the webhook on its own
            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
            except standardwebhooks.WebhookVerificationError as exc:
                error = f"{secret[:10]}...: {exc}"
        if not self.secrets:
            error = "the receiver has no secret"
        self.arrivals.append(Arrival(headers, body, time.monotonic(), error))
        if error is not None:
            return web.json_response({"error": error}, status=400)
        return await self.reply(len(self.arrivals), request)

    async def hold(self, seconds: float) -> None:
        """Keep a request open for `seconds` (or until the test ends)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), seconds)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class Harness:
    api: httpx.AsyncClient  # as tenant `a`
    redis: fakeredis.FakeAsyncRedis
    settings: Settings
    receiver: Receiver
    upstream: str  # a status URL that answers "completed" at once
    simulator: str
    worker_task: asyncio.Task[None]

    @property
    def keys(self) -> Keys:
        return Keys(self.settings.namespace)

    def alive(self) -> None:
        if self.worker_task.done():
            raise AssertionError(f"the worker stopped: {self.worker_task!r}")

    async def register(self, webhook_url: str | None = "receiver", **body: Any) -> dict[str, Any]:
        request = {"status_url": self.upstream, "policy": FAST_POLICY, **body}
        if webhook_url is not None:
            request["webhook_url"] = self.receiver.url if webhook_url == "receiver" else webhook_url
        response = await self.api.post("/v1/watches", json=request)
        assert response.status_code == 201, response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def watch(self, watch_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/v1/watches/{watch_id}")
        assert response.status_code == 200, response.text
        watch: dict[str, Any] = response.json()
        return watch

    async def deliveries(self, watch_id: str) -> list[dict[str, Any]]:
        response = await self.api.get(f"/v1/watches/{watch_id}/deliveries")
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def webhooks(self) -> dict[str, int]:
        response = await self.api.get("/v1/status")
        assert response.status_code == 200, response.text
        counts: dict[str, int] = response.json()["webhooks"]
        return counts

    async def secret(self) -> dict[str, Any]:
        response = await self.api.get("/v1/webhook-secret")
        assert response.status_code == 200, response.text
        secret: dict[str, Any] = response.json()
        return secret

    async def wait_webhook(self, watch_id: str, state: str) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            watch = await self.watch(watch_id)
            return watch if watch["webhook"]["state"] == state else None

        return await until(reached, f"webhook of {watch_id} {state}", alive=self.alive)

    async def wait_attempts(self, watch_id: str, n: int) -> list[dict[str, Any]]:
        async def logged() -> list[dict[str, Any]] | None:
            items = await self.deliveries(watch_id)
            return items if len(items) >= n else None

        return await until(logged, f"{n} delivery attempts of {watch_id}", alive=self.alive)

    async def queued(self, watch_id: str) -> float | None:
        """The watch's score in the outbox: None when no delivery is due or in flight."""
        score: float | None = await self.redis.zscore(self.keys.of(watch_id).outbox, watch_id)
        return score


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HarnessFactory]:
    """`await make_harness(**settings)`: fakeredis, the API (tenants a and b), a worker with both
    roles, the simulator and a receiver (started unless `receiver_up=False`); all closed after."""
    for name in list(os.environ):
        if name.startswith("VTW_"):
            monkeypatch.delenv(name)
    async with AsyncExitStack() as stack:

        async def start(receiver_up: bool = True, **overrides: Any) -> Harness:
            options: dict[str, Any] = {
                "api_keys": "a:key-a,b:key-b",
                "allowed_networks": LOOPBACK,
                "webhook_retry_schedule": "0.1,0.1,0.1",
                "webhook_timeout": 0.5,
                "shutdown_grace_seconds": 1.0,
                **overrides,
            }
            settings = Settings(**options)
            redis = fakeredis.FakeAsyncRedis(decode_responses=True)
            stack.push_async_callback(redis.aclose)

            sim_runner = web.AppRunner(create_simulator(SimulatorConfig(delay=0.0)))
            await sim_runner.setup()
            stack.push_async_callback(sim_runner.cleanup)
            await web.TCPSite(sim_runner, "127.0.0.1", 0).start()
            simulator = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"

            receiver = Receiver()
            stack.push_async_callback(receiver.stop)
            if receiver_up:
                await receiver.start()

            app = create_app(settings, redis=redis)
            await stack.enter_async_context(app.router.lifespan_context(app))
            api = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://api", headers=AS_A
                )
            )
            receiver.secrets = [(await api.get("/v1/webhook-secret")).json()["secret"]]

            worker = Worker(settings, redis)
            task = asyncio.create_task(worker.run())

            async def stop_worker() -> None:
                worker.stop()
                await asyncio.wait_for(task, 15)

            stack.push_async_callback(stop_worker)
            return Harness(api, redis, settings, receiver, f"{simulator}/status", simulator, task)

        yield start


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness()


def all_verified(receiver: Receiver) -> None:
    assert receiver.arrivals, "the receiver got nothing"
    errors = [a.error for a in receiver.arrivals if a.error is not None]
    assert errors == [], errors


def assert_one_event(receiver: Receiver, watch: dict[str, Any]) -> None:
    """Every arrival is the same event of this watch: one webhook-id, one body."""
    assert set(receiver.ids) == {f"msg_{watch['id']}"}
    assert len({a.body for a in receiver.arrivals}) == 1
    event = json.loads(receiver.arrivals[0].body)
    assert event["type"] == f"watch.{watch['state']}"
    assert event["data"]["id"] == watch["id"]
    assert event["data"]["state"] == watch["state"]


async def test_a_completed_watch_delivers_one_verified_webhook(harness: Harness) -> None:
    watch = await harness.register(metadata={"video": "abc.mp4"})

    done = await harness.wait_webhook(watch["id"], "delivered")

    all_verified(harness.receiver)
    assert len(harness.receiver.arrivals) == 1
    arrival = harness.receiver.arrivals[0]
    assert arrival.headers["content-type"] == "application/json"
    assert abs(int(arrival.headers["webhook-timestamp"]) - time.time()) < 60
    assert len(arrival.headers["webhook-signature"].split(" ")) == 1  # one live secret
    secret = (await harness.secret())["secret"]
    event = standardwebhooks.Webhook(secret).verify(arrival.body, arrival.headers)
    assert event["type"] == "watch.completed"
    assert event["data"]["id"] == watch["id"]
    assert event["data"]["metadata"] == {"video": "abc.mp4"}
    assert event["data"]["webhook_url"] == harness.receiver.url
    assert event["timestamp"] is not None and event["data"]["finished_at"] is not None
    assert datetime.fromisoformat(event["timestamp"]) == datetime.fromisoformat(
        event["data"]["finished_at"]
    )
    assert_one_event(harness.receiver, done)
    assert done["state"] == "completed"
    assert done["webhook"] == {"state": "delivered", "attempts": 1, "last_status_code": 200}
    (attempt,) = await harness.deliveries(watch["id"])
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["next_attempt_at"] is None and attempt["latency_ms"] >= 0
    assert await harness.webhooks() == {"pending": 0, "delivered": 1, "failed": 0}
    assert await harness.queued(watch["id"]) is None


async def test_after_rotation_webhooks_carry_two_signatures_that_both_verify(
    harness: Harness,
) -> None:
    first = (await harness.secret())["secret"]
    assert (await harness.secret())["previous"] is None
    before = await harness.register()
    await harness.wait_webhook(before["id"], "delivered")

    rotated = await harness.api.post("/v1/webhook-secret/rotate")
    assert rotated.status_code == 200
    second = rotated.json()["secret"]
    assert second.startswith("whsec_") and second != first
    assert rotated.json()["previous"] == first
    assert await harness.secret() == {"secret": second, "previous": first}
    harness.receiver.secrets = [second, first]  # each must verify every later webhook alone
    after = await harness.register()
    await harness.wait_webhook(after["id"], "delivered")

    all_verified(harness.receiver)
    old, new = harness.receiver.arrivals
    assert len(old.headers["webhook-signature"].split(" ")) == 1
    signatures = new.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret in (second, first):
        standardwebhooks.Webhook(secret).verify(new.body, new.headers)
        verify(secret, new.headers, new.body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(webhooks.new_secret()).verify(new.body, new.headers)
    # Tenants have their own secrets.
    other = await harness.api.get("/v1/webhook-secret", headers=AS_B)
    assert other.json()["secret"] not in (first, second) and other.json()["previous"] is None


async def test_receiver_down_then_up_delivers_with_the_same_webhook_id(
    make_harness: HarnessFactory,
) -> None:
    port = free_port()  # nothing listens here yet: connection refused
    harness = await make_harness(receiver_up=False, webhook_retry_schedule=",".join(["0.1"] * 40))
    harness.receiver.port = port
    watch = await harness.register()

    refused = await harness.wait_attempts(watch["id"], 2)
    harness.receiver.reply = codes(500)  # back up, with one more hiccup
    await harness.receiver.start()
    done = await harness.wait_webhook(watch["id"], "delivered")

    all_verified(harness.receiver)
    assert len(harness.receiver.arrivals) == 2
    assert_one_event(harness.receiver, done)
    for attempt in refused:
        assert attempt["status_code"] is None
        assert attempt["error"] and "Cannot connect" in attempt["error"], attempt
        assert attempt["next_attempt_at"] is not None
    items = await harness.deliveries(watch["id"])
    assert [a["status_code"] for a in items[-2:]] == [500, 200]
    assert all(a["status_code"] is None for a in items[:-2])
    assert done["webhook"] == {
        "state": "delivered",
        "attempts": len(items),
        "last_status_code": 200,
    }


async def test_a_5xx_storm_is_delivered_on_the_last_scheduled_attempt(harness: Harness) -> None:
    storm = len(harness.settings.webhook_retry_schedule)  # 3 retries: 4 attempts in all
    harness.receiver.reply = codes(*[500] * storm)
    watch = await harness.register()

    done = await harness.wait_webhook(watch["id"], "delivered")

    all_verified(harness.receiver)
    assert len(harness.receiver.arrivals) == storm + 1
    assert_one_event(harness.receiver, done)
    items = await harness.deliveries(watch["id"])
    assert [a["status_code"] for a in items] == [500] * storm + [200]
    assert [a["error"] for a in items] == ["HTTP 500"] * storm + [None]
    assert items[-1]["next_attempt_at"] is None
    for attempt, following in itertools.pairwise(items):
        at = datetime.fromisoformat(attempt["at"])
        due = datetime.fromisoformat(attempt["next_attempt_at"])
        gap = (due - at).total_seconds()
        assert 0.08 - 0.001 <= gap <= 0.12 + 0.001, gap  # 0.1 s ± 20 %
        assert datetime.fromisoformat(following["at"]) >= due  # never early
    assert done["webhook"] == {"state": "delivered", "attempts": storm + 1, "last_status_code": 200}
    assert await harness.webhooks() == {"pending": 0, "delivered": 1, "failed": 0}


async def test_503_retry_after_is_clamped_to_twice_the_scheduled_delay(harness: Harness) -> None:
    harness.receiver.reply = codes(503, headers={"Retry-After": "3600"})
    watch = await harness.register()

    await harness.wait_webhook(watch["id"], "delivered")

    first, second = await harness.deliveries(watch["id"])
    assert first["status_code"] == 503
    due = datetime.fromisoformat(first["next_attempt_at"])
    assert (due - datetime.fromisoformat(first["at"])).total_seconds() == pytest.approx(0.2)
    assert second["status_code"] == 200 and datetime.fromisoformat(second["at"]) >= due


async def test_a_slow_receiver_times_out_and_a_later_attempt_succeeds(harness: Harness) -> None:
    timeout = harness.settings.webhook_timeout

    async def slow_then_fast(n: int, request: web.Request) -> web.StreamResponse:
        if n <= 2:
            await harness.receiver.hold(timeout * 10)
        return web.json_response({"ok": True})

    harness.receiver.reply = slow_then_fast
    watch = await harness.register()

    done = await harness.wait_webhook(watch["id"], "delivered")

    all_verified(harness.receiver)
    assert_one_event(harness.receiver, done)
    items = await harness.deliveries(watch["id"])
    assert [a["status_code"] for a in items] == [None, None, 200]
    for attempt in items[:2]:
        assert attempt["error"] == "request timed out"
        assert timeout * 1000 * 0.9 <= attempt["latency_ms"] < timeout * 1000 * 5
    assert items[2]["latency_ms"] < timeout * 1000
    assert done["webhook"]["attempts"] == 3


async def test_a_redirect_is_a_failure_and_its_target_is_never_contacted(
    harness: Harness,
) -> None:
    target = Receiver(secrets=harness.receiver.secrets)
    await target.start()
    try:

        async def redirect(n: int, request: web.Request) -> web.StreamResponse:
            return web.Response(status=302, headers={"Location": target.url})

        harness.receiver.reply = redirect
        watch = await harness.register()

        done = await harness.wait_webhook(watch["id"], "failed")
    finally:
        await target.stop()

    attempts = len(harness.settings.webhook_retry_schedule) + 1
    assert len(harness.receiver.arrivals) == attempts
    all_verified(harness.receiver)
    assert target.arrivals == []
    items = await harness.deliveries(watch["id"])
    assert [(a["status_code"], a["error"]) for a in items] == [(302, "HTTP 302")] * attempts
    assert done["webhook"] == {"state": "failed", "attempts": attempts, "last_status_code": 302}


async def test_410_stops_delivery_at_once(harness: Harness) -> None:
    harness.receiver.reply = codes(410, 410, 410, 410)
    watch = await harness.register()

    done = await harness.wait_webhook(watch["id"], "failed")

    assert done["webhook"] == {"state": "failed", "attempts": 1, "last_status_code": 410}
    (attempt,) = await harness.deliveries(watch["id"])
    assert attempt["status_code"] == 410 and attempt["next_attempt_at"] is None
    assert await harness.queued(watch["id"]) is None  # nothing more is scheduled
    assert len(harness.receiver.arrivals) == 1
    assert await harness.webhooks() == {"pending": 0, "delivered": 0, "failed": 1}


async def test_an_exhausted_schedule_is_a_dead_letter_until_a_manual_retry(
    harness: Harness,
) -> None:
    attempts = len(harness.settings.webhook_retry_schedule) + 1
    harness.receiver.reply = codes(*[500] * attempts)
    watch = await harness.register()

    failed = await harness.wait_webhook(watch["id"], "failed")

    assert failed["webhook"] == {"state": "failed", "attempts": attempts, "last_status_code": 500}
    assert await harness.webhooks() == {"pending": 0, "delivered": 0, "failed": 1}
    assert await harness.queued(watch["id"]) is None
    items = await harness.deliveries(watch["id"])
    assert [a["status_code"] for a in items] == [500] * attempts
    assert items[-1]["next_attempt_at"] is None
    assert all(a["next_attempt_at"] is not None for a in items[:-1])
    assert len(harness.receiver.arrivals) == attempts

    retried = await harness.api.post(f"/v1/watches/{watch['id']}/deliveries/retry")
    assert retried.status_code == 202
    delivered = await harness.wait_webhook(watch["id"], "delivered")

    assert delivered["webhook"] == {
        "state": "delivered",
        "attempts": attempts + 1,
        "last_status_code": 200,
    }
    assert await harness.webhooks() == {"pending": 0, "delivered": 1, "failed": 0}
    assert len(await harness.deliveries(watch["id"])) == attempts + 1
    all_verified(harness.receiver)
    assert_one_event(harness.receiver, failed)

    # A delivered webhook can be sent again on request; the counts do not drift.
    again = await harness.api.post(f"/v1/watches/{watch['id']}/deliveries/retry")
    assert again.status_code == 202
    await harness.wait_attempts(watch["id"], attempts + 2)
    resent = await harness.wait_webhook(watch["id"], "delivered")
    assert resent["webhook"]["attempts"] == attempts + 2
    assert await harness.webhooks() == {"pending": 0, "delivered": 1, "failed": 0}
    assert len(set(harness.receiver.ids)) == 1 and len(harness.receiver.ids) == attempts + 2


async def test_retry_refuses_pending_watches_and_hides_other_tenants(harness: Harness) -> None:
    async with httpx.AsyncClient(base_url=harness.simulator, trust_env=False) as sim:
        job = (await sim.post("/jobs", json={"duration": 3600})).json()
    pending = await harness.register(status_url=job["status_url"])
    done = await harness.register()
    await harness.wait_webhook(done["id"], "delivered")

    busy = await harness.api.post(f"/v1/watches/{pending['id']}/deliveries/retry")
    assert busy.status_code == 409
    assert "not ended" in busy.json()["detail"]
    assert (await harness.watch(pending["id"]))["state"] == "pending"
    for watch_id in (done["id"], pending["id"], "w_missing"):
        hidden = await harness.api.post(f"/v1/watches/{watch_id}/deliveries/retry", headers=AS_B)
        assert hidden.status_code == 404, hidden.text
        log = await harness.api.get(f"/v1/watches/{watch_id}/deliveries", headers=AS_B)
        assert log.status_code == 404
    assert (await harness.watch(done["id"]))["webhook"]["attempts"] == 1
    assert await harness.queued(done["id"]) is None  # tenant b queued nothing
    b_status = await harness.api.get("/v1/status", headers=AS_B)
    assert b_status.json()["webhooks"] == {"pending": 0, "delivered": 0, "failed": 0}


async def test_a_watch_without_webhook_url_sends_nothing(harness: Harness) -> None:
    watch = await harness.register(webhook_url=None)
    assert watch["webhook"] == {"state": "none", "attempts": 0, "last_status_code": None}

    async def ended() -> dict[str, Any] | None:
        current = await harness.watch(watch["id"])
        return current if current["state"] != "pending" else None

    done = await until(ended, "the watch to end", alive=harness.alive)

    assert done["state"] == "completed"
    assert done["webhook"] == {"state": "none", "attempts": 0, "last_status_code": None}
    assert await harness.deliveries(watch["id"]) == []
    assert await harness.queued(watch["id"]) is None  # no outbox entry was ever made
    assert await harness.webhooks() == {"pending": 0, "delivered": 0, "failed": 0}
    assert harness.receiver.arrivals == []
    retried = await harness.api.post(f"/v1/watches/{watch['id']}/deliveries/retry")
    assert retried.status_code == 409
    assert "webhook_url" in retried.json()["detail"]
