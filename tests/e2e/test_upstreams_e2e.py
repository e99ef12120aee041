"""Watching any job API (issue 19) end to end with real processes: every preset against the
simulator's shape of it, through `vtwatch api` + `vtwatch worker` + Redis, to `completed` (with
the job's `result` on the watch and in the signed webhook) and to `error` (with the provider's
message), polling with an upstream credential (a header) that reaches the upstream and nothing
else: not the webhook receiver, not Redis in clear, not a log line, not an API answer.

One setup for everything: one simulator requiring `X-Api-Key: <secret>` (each job in its own
shape), one API and one worker (logging at debug) with `VTW_SECRET_KEYS`, an in-process
webhook receiver, and the shared Redis in a fresh namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from functools import partial
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from client.presets import PRESETS
from client.simulator import SHAPES, error_message, result_url
from client.webhooks import WebhookVerificationError, verify
from service.sealing import generate_key

from .faults import Receiver, webhook_secret
from .helpers import Api, Simulator, gather_limited, wait_all_done
from .procs import SHARED_REDIS_URL, Proc, Processes, free_port, poll_until, service_env, vtwatch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

HEADER = "X-Api-Key"
POLICY = {
    "initial_wait_time": 0.1,
    "backoff_factor": 1.5,
    "jitter": 0.05,
    "max_interval": 0.3,
    "max_wait_time": 30.0,
}
JOB_SECONDS = 1.0


def expected_result(preset: str, job_id: str) -> Any:
    """What a completed job of the simulator's `preset` shape produced, read by the preset's
    `result` path (written out, not computed with the preset, so a wrong path shows)."""
    url = result_url(job_id)
    return {
        "vtwatch": None,  # the original protocol carries no result
        "heygen": url,
        "elevenlabs-dubbing": {"dubbing_id": job_id, "target_languages": ["es"]},
        "synthesia": url,
        "assemblyai": {"id": job_id, "text": f"simulated transcript of job {job_id}"},
        "google-lro": {"uri": url},
        "azure-lro": {"url": url},
    }[preset]


def expected_error(preset: str, job_id: str) -> str | None:
    """The `last_error` (and `reason`) of a failed job: the provider's message where the shape
    carries one."""
    if preset == "vtwatch":  # {"result": "error"}, read as the original protocol always was
        return None
    if preset == "synthesia":  # {"status": "error"}: no message; `error || message || status`
        return "error"
    return error_message(job_id)


async def start_service(procs: Processes, env: dict[str, str]) -> tuple[str, list[Proc]]:
    """An API and a worker logging at debug (the most lines that could leak a secret): the
    API's URL and both processes."""
    port = free_port()
    api = procs.start(
        "api",
        [*vtwatch(), "--log-level", "debug", "api", "--host", "127.0.0.1", "--port", str(port)],
        env,
    )
    url = f"http://127.0.0.1:{port}"
    await procs.wait_http(api, f"{url}/healthz")
    worker = procs.start("worker", [*vtwatch(), "--log-level", "debug", "worker"], env)
    return url, [api, worker]


class TenantStream:
    """`GET /v1/events` read raw in the background (every registration and end of the tenant's
    watches), to search for the secret afterwards."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.text: list[str] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        async with self.http.stream("GET", self.url, timeout=120) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_text():
                self.text.append(chunk)
                if "event: ready" in "".join(self.text[-2:]):
                    self.ready.set()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.ready.wait(), 10)

    async def stop(self) -> str:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self.task
        return "".join(self.text)


async def redis_dump(redis: aioredis.Redis, namespace: str) -> dict[str, str]:
    """Every key of the namespace (and its hosts' and upstreams' tags) with its whole value as
    text, whatever its type."""
    dump: dict[str, str] = {}
    async for raw in redis.scan_iter(match=f"*{namespace}*", count=1000):
        key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        kind = await redis.type(raw)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        value: Any
        if kind == "string":
            value = await redis.get(raw)
        elif kind == "hash":
            value = await redis.hgetall(raw)
        elif kind == "zset":
            value = await redis.zrange(raw, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(raw, 0, -1)
        elif kind == "set":
            value = await redis.smembers(raw)
        elif kind == "stream":
            value = await redis.xrange(raw)
        elif kind == "none":  # expired meanwhile
            continue
        else:
            raise AssertionError(f"{key}: a {kind} this scan cannot read")
        dump[key] = repr(value) + " " + _text(value)
    return dump


def _text(value: Any) -> str:
    """All bytes inside `value` decoded (so a secret in a nested container shows as text)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return " ".join(_text(k) + " " + _text(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return " ".join(_text(item) for item in value)
    return str(value)


async def watch_presets(
    procs: Processes,
    namespace: str,
    http: httpx.AsyncClient,
    redis: aioredis.Redis,
    presets: list[str],
) -> None:
    """The whole scenario for `presets` in one setup (see the module's docstring); plus one
    heygen watch registered without the header, which the upstream refuses (401)."""
    secret = "sk-e2e-" + secrets.token_hex(16)
    env = service_env(
        SHARED_REDIS_URL,
        namespace,
        secret_keys=generate_key(),
        webhook_retry_schedule="0.2,0.2,0.2",
    )
    _, sim_url = await procs.start_simulator(
        "simulator", "--seed", "19", "--require-header", f"{HEADER}: {secret}"
    )
    api_url, service_procs = await start_service(procs, env)
    receiver = await Receiver().start()
    sim, api = Simulator(http, sim_url), Api(http, api_url)
    answers: list[str] = []  # the raw text of every API answer, searched for the secret
    stream = TenantStream(http, f"{api_url}/v1/events")
    followed: list[asyncio.Task[httpx.Response]] = []

    async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await http.request(method, f"{api_url}{path}", **kwargs)
        answers.append(f"{method} {path} -> {response.status_code} {response.text}")
        return response

    try:
        hook_secret = await webhook_secret(http, api_url)
        await stream.start()

        # A registration the API refuses (an unknown preset) does not echo the header either.
        refused = await call(
            "POST",
            "/v1/watches",
            json={
                "status_url": f"{sim_url}/jobs/j1/status",
                "upstream": {"preset": "no-such-preset", "headers": {HEADER: secret}},
            },
        )
        assert refused.status_code == 422, refused.text

        async def register(
            job: dict[str, Any], preset: str, headers: dict[str, str]
        ) -> dict[str, Any]:
            body = {
                "status_url": job["status_url"],
                "webhook_url": receiver.hook_url,
                "policy": POLICY,
                "metadata": {"job": job["id"], "preset": preset},
                "upstream": {"preset": preset, "headers": headers},
            }
            response = await call("POST", "/v1/watches", json=body)
            assert response.status_code == 201, response.text
            watch: dict[str, Any] = response.json()
            return watch

        # First a heygen job watched WITHOUT the header: the upstream answers 401, a terminal
        # error at the first poll. Once it has ended, the worker is polling for sure, so the
        # 1 s jobs below are seen pending, however slowly it started.
        (bare_job,) = await sim.create_jobs([{"duration": 0.0, "shape": "heygen"}])
        bare = await register(bare_job, "heygen", {})
        assert bare["upstream"]["headers"] == {}, bare

        async def bare_ended() -> bool:
            return bool((await api.get(bare["id"]))["state"] != "pending")

        await poll_until(bare_ended, timeout=30, what="the watch without the header to end")

        # Per preset one job ending completed and one ending error, in the preset's shape.
        plan = [(p, outcome) for p in presets for outcome in ("completed", "error")]
        specs = [{"duration": JOB_SECONDS, "outcome": o, "shape": p} for p, o in plan]
        header_jobs = await sim.create_jobs(specs)
        jobs = [bare_job, *header_jobs]
        registered = await gather_limited(
            [
                partial(register, job, p, {HEADER: secret})
                for job, (p, _) in zip(header_jobs, plan, strict=True)
            ]
        )
        # Each watch's own event stream, followed to its end (a poll event per observed poll).
        followed += [
            asyncio.create_task(call("GET", f"/v1/watches/{w['id']}/events", timeout=40))
            for w in registered
        ]
        for watch, (preset, _) in zip(registered, plan, strict=True):
            assert watch["state"] == "pending", watch
            assert watch["upstream"]["preset"] == preset, watch
            assert watch["upstream"]["headers"] == {HEADER: "***"}, watch

        total = len(registered) + 1
        await wait_all_done(api, total, timeout=30, alive=procs.check_alive)

        async def all_delivered() -> bool:
            return len(receiver.by_webhook_id()) >= total

        await poll_until(
            all_delivered, timeout=15, what=f"{total} webhooks", alive=procs.check_alive
        )

        # -- every watch ends as its job did, with the provider's message or result ---------
        watches = {
            w["id"]: w
            for w in [
                (await call("GET", f"/v1/watches/{w['id']}")).json() for w in [*registered, bare]
            ]
        }
        details = await sim.jobs(job["id"] for job in jobs)
        wrong = []
        for watch, job, (preset, outcome) in zip(registered, header_jobs, plan, strict=True):
            got = watches[watch["id"]]
            job_id = job["id"]
            seen = (preset, outcome, got["state"], got["last_error"], got["result"])
            if got["state"] != outcome:
                wrong.append(seen)
            elif outcome == "completed":
                if got["result"] != expected_result(preset, job_id) or got["last_error"]:
                    wrong.append(seen)
            elif got["last_error"] != expected_error(preset, job_id) or got["reason"] != (
                expected_error(preset, job_id)
            ):
                wrong.append(seen)
        assert not wrong, wrong
        for watch, job in zip(registered, header_jobs, strict=True):
            got, sim_job = watches[watch["id"]], details[job["id"]]
            assert got["upstream"]["headers"] == {HEADER: "***"}, got
            assert got["result_truncated"] is False, got
            # The header reached the upstream: no 401 for this job, every poll was answered,
            # and the rules read it pending first (a 1 s job, polled from 0.1 s on).
            assert sim_job["unauthorized"] == 0, sim_job
            assert sim_job["requests"] == got["attempts"] >= 2, (sim_job, got)

        # -- without the header, the same upstream answered 401: a terminal error at once ----
        got_bare = watches[bare["id"]]
        assert got_bare["state"] == "error", got_bare
        assert "401" in (got_bare["reason"] or ""), got_bare
        assert got_bare["attempts"] == 1, got_bare
        assert got_bare["result"] is None, got_bare
        bare_sim = details[bare_job["id"]]
        assert bare_sim["unauthorized"] == 1 and bare_sim["requests"] == 0, bare_sim
        stats = await sim.stats()
        assert stats["by_status"].get("401") == 1, stats

        # -- signed webhooks carry the outcome and the result, never the header ------------
        by_id = receiver.by_webhook_id()
        for watch in [*registered, bare]:
            arrivals = by_id.get(f"msg_{watch['id']}")
            assert arrivals, f"no webhook for {watch['id']}"
            for arrival in arrivals:
                try:
                    verify(hook_secret, arrival.headers, arrival.body)
                except WebhookVerificationError as exc:
                    raise AssertionError(f"{watch['id']}: {exc}") from None
            event = json.loads(arrivals[-1].body)
            final = watches[watch["id"]]
            assert event["type"] == f"watch.{final['state']}", event
            data = event["data"]
            assert data["id"] == watch["id"] and data["state"] == final["state"], data
            assert data["result"] == final["result"], (data, final)
            assert data["last_error"] == final["last_error"], (data, final)
            # The rest is the Watch as GET answers it, but for the delivery's own progress.
            assert data["webhook"] == {"state": "pending", "attempts": 0, "last_status_code": None}
            rest = {k: v for k, v in data.items() if k != "webhook"}
            assert rest == {k: v for k, v in final.items() if k != "webhook"}
        for arrival in receiver.arrivals:
            assert secret not in arrival.body.decode(errors="replace"), arrival
            assert not any(secret in f"{k}: {v}" for k, v in arrival.headers.items()), arrival
            assert HEADER.lower() not in arrival.headers, arrival

        # -- no API answer holds the secret: GETs, the list, deliveries, status, streams ----
        listed = await call("GET", "/v1/watches", params={"limit": 500})
        assert len(listed.json()["items"]) == total, listed.text
        await call("GET", "/v1/status")
        for watch in [*registered, bare]:
            await call("GET", f"/v1/watches/{watch['id']}/deliveries")
        for watch, task in zip(registered, followed, strict=True):
            events = await asyncio.wait_for(task, 10)
            assert events.status_code == 200, events.text
            ended = watches[watch["id"]]["state"]
            assert f'"state":"{ended}"' in events.text.replace(" ", ""), events.text
        tenant_events = await stream.stop()
        answers.append(tenant_events)
        assert tenant_events.count("event: watch") >= total, tenant_events
        assert all(w["id"] in tenant_events for w in [*registered, bare]), tenant_events
        leaks = [answer[:300] for answer in answers if secret in answer]
        assert not leaks, leaks

        # -- Redis holds the headers sealed only ----------------------------------------------
        dump = await redis_dump(redis, namespace)
        docs = [key for key in dump if ":w:" in key]
        assert len(docs) == total, sorted(dump)
        sealed = [key for key in docs if "sealed_headers" in dump[key]]
        assert len(sealed) == len(registered), sealed  # the bare watch has no headers
        assert not [key for key, value in dump.items() if secret in value]
    finally:
        for task in followed:
            task.cancel()
        await stream.stop()
        await receiver.aclose()

    # -- and no log line of the API or the worker ----------------------------------------------
    procs.stop_all()
    for proc in service_procs:
        log = proc.log()
        assert log.strip(), f"{proc.name} logged nothing"
        assert secret not in log, f"{proc.name} logged the secret"


async def test_every_preset_completes_and_fails_with_a_header_that_never_leaks(
    procs: Processes, namespace: str, http: httpx.AsyncClient, shared_redis: aioredis.Redis
) -> None:
    assert set(PRESETS) == set(SHAPES), "a preset without a simulator shape (or the reverse)"
    await watch_presets(procs, namespace, http, shared_redis, list(PRESETS))
