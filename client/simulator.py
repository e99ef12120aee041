"""A fake video-translation server (the upstream) for demos, tests and benchmarks.

`GET /status` serves one default job; `POST /jobs` creates more, each polled at
`/jobs/{id}/status`. Faults (latency, hangs, 429, 503, malformed bodies) and hints are
drawn per request from one seeded RNG; `/jobs/{id}` and `/stats` expose counters. With a
`DurationMix`, jobs posted without a duration (and the default job, without `--delay`) draw
theirs from it; with `host_rate_limit`, status requests beyond a token bucket over all of them
answer 429 with `Retry-After`.

With a `shape` (`SHAPES`: a provider's preset name) status bodies take that provider's format;
with `require_header` status requests without it answer 401; a job posted with `callback_url`
is POSTed there when it ends (after `callback_delay`; lost with `callback_loss_rate`), as the
providers' webhooks do. A job posted with an `id` (1-64 of `[A-Za-z0-9_-]`, not yet taken: else
409) gets that id, as providers whose job id the caller chooses do (Azure's `Operation-Id`):
the caller knows the status URL before the job exists (to register its watch first).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import itertools
import json
import math
import random
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from .workload import MIXES, DurationMix, TokenBucket

OUTCOMES = ("completed", "error", "random")
RATES = frozenset(
    {
        "error_rate",
        "fail_rate",
        "rate_limit_rate",
        "malformed_rate",
        "hang_rate",
        "callback_loss_rate",
    }
)
SHARES = RATES | {"long_share"}
OVERRIDES = (
    "latency",
    "retry_after",
    "hints",
    "eta_error",
    "callback_delay",
    *sorted(RATES - {"error_rate"}),
)
DEFAULT_JOB = "default"
MALFORMED_BODY = b'{"result": "pend'
JSON = "application/json"
BODIES = {r: json.dumps({"result": r}).encode() for r in ("pending", "completed", "error")}
CALLBACK_TIMEOUT = 5.0  # seconds for one push, its only attempt
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # an id the caller chooses (POST /jobs "id")

RESULT_URL = "https://cdn.example/videos/{id}.mp4"
ERROR_MESSAGE = "simulated failure of job {id}"


def result_url(job_id: str) -> str:
    """The deterministic result (a video URL) of a completed job in every shape."""
    return RESULT_URL.format(id=job_id)


def error_message(job_id: str) -> str:
    """The deterministic error message of a failed job, in the shapes that carry one."""
    return ERROR_MESSAGE.format(id=job_id)


# A shape renders (job id, "pending" | "completed" | "error", fraction done in [0, 1]) as the
# provider's status body, and (job id, terminal result) as the body of its push.
Render = Callable[[str, str, float], dict[str, Any]]
Push = Callable[[str, str], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Shape:
    """One provider's body format: its status body, its push body, and the doc it follows."""

    doc: str
    status: Render
    push: Push


def _stage(fraction: float, *names: str) -> str:
    """The pending sub-state: `names` split the job's running time evenly."""
    return names[min(len(names) - 1, int(fraction * len(names)))]


def _vtwatch(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    return {"result": result}  # progress and eta_seconds come from `hints` (see Simulator)


def _heygen(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    status = {"completed": "completed", "error": "failed"}.get(result)
    data: dict[str, Any] = {
        "id": job_id,
        "video_id": job_id,
        "status": status or _stage(fraction, "waiting", "pending", "processing", "processing"),
        "video_url": result_url(job_id) if result == "completed" else None,
        "thumbnail_url": None,
        "error": None,
    }
    if result == "error":
        data["error"] = {"code": 40119, "message": error_message(job_id), "detail": job_id}
    return {"code": 100, "data": data, "message": "Success"}


def _heygen_push(job_id: str, result: str) -> dict[str, Any]:
    if result == "completed":
        data = {"video_id": job_id, "url": result_url(job_id), "callback_id": None}
        return {"event_type": "avatar_video.success", "event_data": data}
    data = {"video_id": job_id, "msg": error_message(job_id), "callback_id": None}
    return {"event_type": "avatar_video.fail", "event_data": data}


def _elevenlabs(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    status = {"pending": "dubbing", "completed": "dubbed", "error": "failed"}[result]
    body: dict[str, Any] = {
        "dubbing_id": job_id,
        "name": f"simulated dub {job_id}",
        "status": status,
        "target_languages": ["es"],
    }
    if result == "completed":
        body["media_metadata"] = {"content_type": "video/mp4", "duration": 1.0}
    if result == "error":
        body["error"] = error_message(job_id)
    return body


def _synthesia(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    status = {"pending": "in_progress", "completed": "complete", "error": "error"}[result]
    body: dict[str, Any] = {"id": job_id, "title": f"simulated {job_id}", "status": status}
    if result == "completed":
        body["download"] = result_url(job_id)
    return body


def _synthesia_push(job_id: str, result: str) -> dict[str, Any]:
    kind = "video.completed" if result == "completed" else "video.failed"
    return {"type": kind, "data": _synthesia(job_id, result, 1.0)}


def _assemblyai(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    status = {"completed": "completed", "error": "error"}.get(result)
    body: dict[str, Any] = {
        "id": job_id,
        "status": status or _stage(fraction, "queued", "processing", "processing"),
        "text": f"simulated transcript of job {job_id}" if result == "completed" else None,
    }
    if result == "error":
        body["error"] = error_message(job_id)
    return body


def _assemblyai_push(job_id: str, result: str) -> dict[str, Any]:
    return {"transcript_id": job_id, "status": result}


def _google_lro(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    percent = 100 if result != "pending" else min(99, round(fraction * 100))
    body: dict[str, Any] = {
        "name": f"operations/{job_id}",
        "metadata": {"progressPercent": percent},
    }
    if result == "pending" and fraction >= 0.2:
        body["done"] = False  # proto3 JSON leaves a false `done` out, as early answers do here
    elif result == "completed":
        body |= {"done": True, "response": {"uri": result_url(job_id)}}
    elif result == "error":
        body |= {"done": True, "error": {"code": 13, "message": error_message(job_id)}}
    return body


def _azure_lro(job_id: str, result: str, fraction: float) -> dict[str, Any]:
    status = {"completed": "Succeeded", "error": "Failed"}.get(result)
    body: dict[str, Any] = {
        "id": job_id,
        "status": status or _stage(fraction, "NotStarted", "Running", "Running", "Running"),
        "percentComplete": 100 if result != "pending" else min(99, round(fraction * 100)),
    }
    if result == "completed":
        body["result"] = {"url": result_url(job_id)}
    elif result == "error":
        body["error"] = {"code": "InternalServerError", "message": error_message(job_id)}
    return body


def _terminal(render: Render) -> Push:
    """A push that is the terminal status body (providers that document no webhook body)."""
    return lambda job_id, result: render(job_id, result, 1.0)


SHAPES: dict[str, Shape] = {
    "vtwatch": Shape(
        "this project's upstream: {result: pending|completed|error, progress?, eta_seconds?}; "
        "push {id, result}",
        _vtwatch,
        lambda job_id, result: {"id": job_id, "result": result},
    ),
    "heygen": Shape(
        "HeyGen API v1 GET /v1/video_status.get?video_id= (code 100, data.status "
        "waiting|pending|processing|completed|failed, data.video_url, data.error{code,message,"
        "detail}); push: its webhook event avatar_video.success|avatar_video.fail",
        _heygen,
        _heygen_push,
    ),
    "elevenlabs-dubbing": Shape(
        "ElevenLabs GET /v1/dubbing/{dubbing_id} (status dubbing|dubbed|failed, "
        "target_languages, error); push: the terminal status body",
        _elevenlabs,
        _terminal(_elevenlabs),
    ),
    "synthesia": Shape(
        "Synthesia API v2 GET /v2/videos/{id} (status in_progress|complete|error|rejected, "
        "download on complete); push: its webhook {type: video.completed|video.failed, data}",
        _synthesia,
        _synthesia_push,
    ),
    "assemblyai": Shape(
        "AssemblyAI GET /v2/transcript/{id} (status queued|processing|completed|error, text, "
        "error); push: its webhook_url POST {transcript_id, status}",
        _assemblyai,
        _assemblyai_push,
    ),
    "google-lro": Shape(
        "Google Cloud long-running Operation (google.longrunning.Operation JSON: name, "
        "metadata, done, response | error{code,message}); push: the terminal Operation",
        _google_lro,
        _terminal(_google_lro),
    ),
    "azure-lro": Shape(
        "Azure REST API guidelines, long-running operation status monitor (status "
        "NotStarted|Running|Succeeded|Failed|Canceled, percentComplete, result, "
        "error{code,message}); push: the terminal status monitor",
        _azure_lro,
        _terminal(_azure_lro),
    ),
}


@dataclass
class SimulatorConfig:
    """How the simulator behaves; fault and hint fields are the defaults of every job."""

    delay: float | None = None
    outcome: str = "completed"
    error_rate: float = 0.2
    seed: int | None = None
    latency: float = 0.0
    fail_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    malformed_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    hints: bool = False
    eta_error: float = 0.0
    hint_retry_after: float | None = None
    mix: str | None = None
    median: float = 30.0
    sigma: float = 0.6
    long_median: float = 180.0
    long_share: float = 0.3
    min_duration: float = 1.0
    max_duration: float = 55.0
    host_rate_limit: float = 0.0  # status requests per second over all jobs; 0: no limit
    host_burst: float = 0.0  # requests at once above that rate; 0: one second's worth
    shape: str = "vtwatch"  # the body format of status answers, a key of SHAPES
    require_header: str | None = None  # "Name: value" every status request must carry, else 401
    callback_delay: float = 0.0  # seconds from a job's end to its push
    callback_loss_rate: float = 0.0  # share of pushes never sent

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
        self.required_header()  # validates it
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seed" or value is None or isinstance(value, bool | str):
                continue
            high = 1.0 if f.name in SHARES else math.inf
            if not (math.isfinite(value) and 0.0 <= value <= high):
                raise ValueError(f"{f.name} must be a number in [0, {high}]")
        self.duration_mix()  # validates the mix

    def required_header(self) -> tuple[str, str] | None:
        """`require_header` split into (name, value)."""
        if self.require_header is None:
            return None
        name, colon, value = self.require_header.partition(":")
        if not colon or not name.strip() or name != name.strip() or not value.strip():
            raise ValueError("require_header must be 'Name: value'")
        return name, value.strip()

    def duration_mix(self) -> DurationMix | None:
        if self.mix is None:
            return None
        return DurationMix(
            self.mix,
            self.median,
            self.sigma,
            self.long_median,
            self.long_share,
            self.min_duration,
            self.max_duration,
        )

    def rate_limiter(self, now: float) -> TokenBucket | None:
        if not self.host_rate_limit:
            return None
        burst = self.host_burst or max(1.0, self.host_rate_limit)
        return TokenBucket(self.host_rate_limit, burst, now)


@dataclass(slots=True)
class Job:
    """One simulated job and the counters of the requests made for it."""

    id: str
    duration: float
    outcome: str
    created_at: float
    config: SimulatorConfig
    requests: int = 0
    in_flight: int = 0
    max_concurrent: int = 0
    first_request_at: float | None = None
    completed_noticed_at: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    unauthorized: int = 0  # status requests answered 401 (not counted in `requests`)
    callback_url: str | None = None
    callback: str | None = None  # the push: scheduled, sent, lost or failed

    @property
    def ends_at(self) -> float:
        return self.created_at + self.duration

    def result(self, now: float) -> str:
        return self.outcome if now >= self.ends_at else "pending"

    def details(self, now: float) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        return data | {"result": self.result(now), "ends_at": self.ends_at, "now": now}


class BadRequest(Exception):
    """A request body that cannot be accepted; the message names the field."""


class Conflict(BadRequest):
    """A job id the caller chose that is taken (409)."""


def _number(value: object, name: str, high: float = math.inf) -> float:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    if math.isfinite(number) and 0.0 <= number <= high:
        return float(number)
    raise BadRequest(f"{name}: must be a number in [0, {high:g}]")


JobSpec = tuple[float | None, str, dict[str, Any], str | None, str | None]


def _parse_job(body: object, where: str = "") -> JobSpec:
    """Validate one job spec: (duration, None to draw it from the mix; outcome; overrides;
    callback URL; the id the caller chose, None for the next `j<n>`)."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where.rstrip('.') or 'body'}: must be a JSON object")
    known = {"id", "duration", "outcome", "shape", "callback_url", *OVERRIDES}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"{where}{unknown[0]}: unknown field")
    duration = _number(body["duration"], f"{where}duration") if "duration" in body else None
    outcome = body.get("outcome", "completed")
    if outcome not in ("completed", "error"):
        raise BadRequest(f"{where}outcome: must be 'completed' or 'error'")
    overrides: dict[str, Any] = {}
    for key in (k for k in OVERRIDES if k in body):
        if key == "hints" and not isinstance(body[key], bool):
            raise BadRequest(f"{where}hints: must be true or false")
        high = 1.0 if key in RATES else math.inf
        overrides[key] = body[key] if key == "hints" else _number(body[key], where + key, high)
    if "shape" in body:
        if body["shape"] not in SHAPES:
            raise BadRequest(f"{where}shape: must be one of {', '.join(SHAPES)}")
        overrides["shape"] = body["shape"]
    callback_url = body.get("callback_url")
    if callback_url is not None and not (
        isinstance(callback_url, str) and callback_url.startswith(("http://", "https://"))
    ):
        raise BadRequest(f"{where}callback_url: must be an http(s) URL")
    job_id = body.get("id")
    if job_id is not None and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
        raise BadRequest(f"{where}id: must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    return duration, outcome, overrides, callback_url, job_id


class Simulator:
    """The state behind the app: jobs, counters, the RNG and the clock."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        # pushes draw from their own RNG, so polls do not change which ones are lost
        self.push_rng = random.Random(None if config.seed is None else f"push-{config.seed}")
        self.ids = itertools.count(1)
        self.mix = config.duration_mix()
        self.header = config.required_header()
        self.pushes: set[asyncio.Task[None]] = set()
        self.session: ClientSession | None = None
        delay = config.delay if config.delay is not None else self.draw_duration()
        outcome = config.outcome
        if outcome == "random":
            outcome = "error" if self.rng.random() < config.error_rate else "completed"
        self.default_delay, self.default_outcome = delay, outcome
        self.reset()

    def reset(self) -> None:
        """Forget all jobs and counters (cancelling pushes not yet sent); the default job
        starts again now."""
        for task in self.pushes:
            task.cancel()
        self.requests = self.in_flight = self.max_in_flight = self.max_concurrent = 0
        self.by_status: dict[int, int] = {}
        self.callbacks = dict.fromkeys(("scheduled", "sent", "lost", "failed"), 0)
        self.rate_limiter = self.config.rate_limiter(self.clock())
        job = Job(DEFAULT_JOB, self.default_delay, self.default_outcome, self.clock(), self.config)
        self.jobs: dict[str, Job] = {DEFAULT_JOB: job}

    def draw_duration(self) -> float:
        """A duration from the mix; without one, the original's 5-15 s."""
        return self.mix.sample(self.rng) if self.mix else self.rng.uniform(5.0, 15.0)

    def create(
        self,
        duration: float,
        outcome: str,
        overrides: dict[str, Any],
        callback_url: str | None = None,
        job_id: str | None = None,
    ) -> Job:
        """A new job (`job_id`, the caller's choice and not taken, else the next free `j<n>`);
        with `callback_url`, its push is scheduled for its end (needs a loop)."""
        if job_id is None:
            job_id = f"j{next(self.ids)}"
            while job_id in self.jobs:  # taken by a caller's choice
                job_id = f"j{next(self.ids)}"
        elif job_id in self.jobs:
            raise ValueError(f"job id taken: {job_id}")
        config = replace(self.config, **overrides) if overrides else self.config
        job = Job(job_id, duration, outcome, self.clock(), config, overrides=overrides)
        self.jobs[job_id] = job
        if callback_url is not None:
            job.callback_url, job.callback = callback_url, "scheduled"
            self.callbacks["scheduled"] += 1
            task = asyncio.get_running_loop().create_task(self._push(job))
            self.pushes.add(task)
            task.add_done_callback(self.pushes.discard)
        return job

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(code): n for code, n in sorted(self.by_status.items())},
            "jobs": len(self.jobs) - 1,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_concurrent": self.max_concurrent,
            "callbacks": dict(self.callbacks),
        }

    def count(self, code: int) -> None:
        self.by_status[code] = self.by_status.get(code, 0) + 1

    def unauthorized(self, request: web.Request, job: Job | None) -> web.Response | None:
        """A 401 when `require_header` is set and the request lacks it (counted), else None."""
        if self.header is None:
            return None
        name, value = self.header
        given = request.headers.get(name)
        if given is not None and hmac.compare_digest(given.encode(), value.encode()):
            return None
        self.requests += 1
        self.count(401)
        if job is not None:
            job.unauthorized += 1
        return web.json_response({"detail": f"missing or wrong {name} header"}, status=401)

    async def poll(self, job: Job) -> web.Response:
        """Answer one status request for `job`, counting it and applying faults."""
        self.requests += 1
        job.requests += 1
        if job.first_request_at is None:
            job.first_request_at = self.clock()
        job.in_flight += 1
        self.in_flight += 1
        job.max_concurrent = max(job.max_concurrent, job.in_flight)
        self.max_concurrent = max(self.max_concurrent, job.max_concurrent)
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await self._answer(job)
        finally:
            job.in_flight -= 1
            self.in_flight -= 1
        self.count(response.status)
        return response

    async def _answer(self, job: Job) -> web.Response:
        cfg, rng = job.config, self.rng
        wait = self.rate_limiter.take(self.clock()) if self.rate_limiter else 0.0
        if wait:
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return web.json_response({"detail": "host rate limit"}, status=429, headers=headers)
        if cfg.hang_rate and rng.random() < cfg.hang_rate:
            await asyncio.sleep(cfg.hang_seconds)
        if cfg.latency:
            await asyncio.sleep(cfg.latency)
        if cfg.rate_limit_rate and rng.random() < cfg.rate_limit_rate:
            headers = {"Retry-After": f"{cfg.retry_after:g}"}
            return web.json_response({"detail": "rate limited"}, status=429, headers=headers)
        if cfg.fail_rate and rng.random() < cfg.fail_rate:
            return web.json_response({"detail": "service unavailable"}, status=503)
        if cfg.malformed_rate and rng.random() < cfg.malformed_rate:
            return web.Response(body=MALFORMED_BODY, content_type=JSON)
        now = self.clock()
        result = job.result(now)
        vtwatch = cfg.shape == "vtwatch"
        if result != "pending":
            if job.completed_noticed_at is None:
                job.completed_noticed_at = now
            if vtwatch:
                return web.Response(body=BODIES[result], content_type=JSON)
            return web.json_response(SHAPES[cfg.shape].status(job.id, result, 1.0))
        headers = {}
        if cfg.hint_retry_after is not None:
            headers["Retry-After"] = f"{cfg.hint_retry_after:g}"
        remaining = job.ends_at - now
        fraction = 1.0 - remaining / job.duration if job.duration else 1.0
        if not vtwatch:
            body = SHAPES[cfg.shape].status(job.id, result, min(1.0, max(0.0, fraction)))
            return web.json_response(body, headers=headers)
        if not cfg.hints:
            return web.Response(body=BODIES[result], content_type=JSON, headers=headers)
        eta = remaining * (1.0 + rng.uniform(-cfg.eta_error, cfg.eta_error))
        body = {"result": result, "progress": round(min(100.0, max(0.0, 100.0 * fraction)), 2)}
        body["eta_seconds"] = round(max(0.0, eta), 3)
        return web.json_response(body, headers=headers)

    async def _push(self, job: Job) -> None:
        """POST the job's end to its callback URL: once, `callback_delay` after it ends
        whether or not anyone polls (the wait is read off the clock at creation and slept in
        real seconds), unless drawn as lost; failures are counted, never raised."""
        assert job.callback_url is not None
        cfg = job.config
        await asyncio.sleep(max(0.0, job.ends_at + cfg.callback_delay - self.clock()))
        self.callbacks["scheduled"] -= 1
        if cfg.callback_loss_rate and self.push_rng.random() < cfg.callback_loss_rate:
            job.callback = "lost"
            self.callbacks["lost"] += 1
            return
        body = SHAPES[cfg.shape].push(job.id, job.outcome)
        if self.session is None:
            self.session = ClientSession(timeout=ClientTimeout(total=CALLBACK_TIMEOUT))
        try:
            async with self.session.post(job.callback_url, json=body) as response:
                ok = 200 <= response.status < 300
        except Exception:  # any failure of the one attempt is only counted
            ok = False
        job.callback = "sent" if ok else "failed"
        self.callbacks[job.callback] += 1

    async def close(self) -> None:
        """Cancel the pushes not yet sent and close the session (on the app's cleanup)."""
        tasks = list(self.pushes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None


SIMULATOR = web.AppKey("simulator", Simulator)


async def _default_status(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = sim.jobs[DEFAULT_JOB]
    return sim.unauthorized(request, job) or await sim.poll(job)


async def _job_status(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = sim.jobs.get(request.match_info["id"])
    denied = sim.unauthorized(request, job)
    if denied is not None:
        return denied
    if job is None:
        sim.requests += 1
        sim.count(404)
        return web.json_response({"detail": "job not found"}, status=404)
    return await sim.poll(job)


async def _job_details(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    job = sim.jobs.get(request.match_info["id"])
    if job is None:
        return web.json_response({"detail": "job not found"}, status=404)
    return web.json_response(job.details(sim.clock()))


async def _create_jobs(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    try:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("body: not valid JSON") from None
        batch = isinstance(body, dict) and "jobs" in body
        if batch and (len(body) != 1 or not isinstance(body["jobs"], list)):
            raise BadRequest("jobs: must be the only field and a list of job objects")
        specs = body["jobs"] if batch else [body]
        parsed = [_parse_job(s, f"jobs[{i}]." if batch else "") for i, s in enumerate(specs)]
        if sim.mix is None and any(spec[0] is None for spec in parsed):
            where = next(i for i, p in enumerate(parsed) if p[0] is None)
            raise BadRequest(f"{f'jobs[{where}].' if batch else ''}duration: required (no --mix)")
        chosen = [spec[4] for spec in parsed]
        for i, job_id in enumerate(chosen):  # none is created unless all ids are free
            if job_id is not None and (job_id in sim.jobs or job_id in chosen[:i]):
                raise Conflict(f"{f'jobs[{i}].' if batch else ''}id: {job_id} is taken")
    except BadRequest as exc:
        code = 409 if isinstance(exc, Conflict) else 400
        return web.json_response({"detail": str(exc)}, status=code)
    base = f"{request.scheme}://{request.host}/jobs/"
    created = []
    for wanted, outcome, overrides, callback_url, job_id in parsed:
        duration = sim.draw_duration() if wanted is None else wanted
        job = sim.create(duration, outcome, overrides, callback_url, job_id)
        url = f"{base}{job.id}/status"
        created.append({"id": job.id, "status_url": url, "duration": duration, "outcome": outcome})
        if job.config.shape != "vtwatch":
            created[-1]["shape"] = job.config.shape
    return web.json_response({"jobs": created} if batch else created[0], status=201)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIMULATOR].stats())


async def _close(app: web.Application) -> None:
    await app[SIMULATOR].close()


async def _reset(request: web.Request) -> web.Response:
    request.app[SIMULATOR].reset()
    return web.json_response({"reset": True})


def create_app(
    config: SimulatorConfig, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """The simulator as an aiohttp application; `clock` is injectable for tests."""
    app = web.Application()
    app[SIMULATOR] = Simulator(config, clock)
    app.router.add_get("/status", _default_status)
    app.router.add_post("/jobs", _create_jobs)
    app.router.add_get("/jobs/{id}/status", _job_status)
    app.router.add_get("/jobs/{id}", _job_details)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/reset", _reset)
    app.on_cleanup.append(_close)
    return app


def _bounded(high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and 0.0 <= value <= high):
            raise argparse.ArgumentTypeError(f"must be between 0 and {high:g}: {text!r}")
        return value

    return parse


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def _header(text: str) -> str:
    try:
        SimulatorConfig(require_header=text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not 'Name: value': {text!r}") from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--host`, `--port` and one flag per `SimulatorConfig` field."""
    d = SimulatorConfig()
    rate, seconds = _bounded(1.0), _bounded(math.inf)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    add("--port", type=_port, default=5000, help="port to listen on (default %(default)s)")
    add("--delay", type=seconds, default=d.delay, help="seconds until /status ends (default 5-15)")
    add("--outcome", choices=OUTCOMES, default=d.outcome, help="how /status ends")
    add("--error-rate", type=rate, default=d.error_rate, help="share of error for random outcome")
    add("--seed", type=int, default=d.seed, help="seed of the RNG, for reproducible runs")
    add("--latency", type=seconds, default=d.latency, help="seconds added to every response")
    add("--fail-rate", type=rate, default=d.fail_rate, help="share of 503 responses")
    add("--rate-limit-rate", type=rate, default=d.rate_limit_rate, help="share of 429 responses")
    add("--retry-after", type=seconds, default=d.retry_after, help="Retry-After of 429 responses")
    add("--malformed-rate", type=rate, default=d.malformed_rate, help="share of non-JSON bodies")
    add("--hang-rate", type=rate, default=d.hang_rate, help="share of requests that hang")
    add("--hang-seconds", type=seconds, default=d.hang_seconds, help="how long a hang lasts")
    add("--hints", action="store_true", help="add progress and eta_seconds to pending answers")
    add("--eta-error", type=seconds, default=d.eta_error, help="relative error of eta_seconds")
    add("--hint-retry-after", type=seconds, default=None, help="Retry-After of pending answers")
    add("--mix", choices=MIXES, default=None, help="draw durations of jobs posted without one")
    add("--median", type=seconds, default=d.median, help="lognormal/bimodal median, s")
    add("--sigma", type=seconds, default=d.sigma, help="lognormal/bimodal sigma (log space)")
    add("--long-median", type=seconds, default=d.long_median, help="bimodal: long jobs' median")
    add("--long-share", type=rate, default=d.long_share, help="bimodal: share of long jobs")
    add("--min-duration", type=seconds, default=d.min_duration, help="loguniform: shortest, s")
    add("--max-duration", type=seconds, default=d.max_duration, help="loguniform: longest, s")
    add("--host-rate-limit", type=seconds, default=d.host_rate_limit, help="status requests/s")
    add("--host-burst", type=seconds, default=d.host_burst, help="burst above the rate limit")
    add("--shape", choices=SHAPES, default=d.shape, help="a provider's status body format")
    add(
        "--require-header",
        type=_header,
        default=None,
        metavar="'NAME: VALUE'",
        help="status requests without this header (or with another value) answer 401",
    )
    add(
        "--callback-delay",
        type=seconds,
        default=d.callback_delay,
        help="seconds from a job's end to the POST to its callback_url",
    )
    add(
        "--callback-loss-rate",
        type=rate,
        default=d.callback_loss_rate,
        help="share of callback POSTs never sent",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the config from arguments parsed with `add_arguments` (argparse errors for a
    combination that is out of range)."""
    try:
        return SimulatorConfig(**{f.name: getattr(args, f.name) for f in fields(SimulatorConfig)})
    except ValueError as exc:
        raise SystemExit(f"simulator: {exc}") from None


async def _serve(config: SimulatorConfig, host: str, port: int) -> None:
    app = create_app(config)
    sim = app[SIMULATOR]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(
            f"simulator listening on http://{host}:{port} - GET /status: {sim.default_outcome}"
            f" after {sim.default_delay:.1f} s ({config.shape} bodies); POST /jobs for more",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM."""
    try:
        asyncio.run(_serve(config, host, port))
    except OSError as exc:
        raise SystemExit(f"simulator: cannot listen on {host}:{port}: {exc}") from None


def main(argv: list[str] | None = None) -> None:
    """`python -m client.simulator [options]`."""
    parser = argparse.ArgumentParser(
        prog="simulator", description="A fake video-translation server."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(config_from_args(args), args.host, args.port)


if __name__ == "__main__":
    main()
