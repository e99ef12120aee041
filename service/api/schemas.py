"""The HTTP API's request and response bodies (what `/docs` shows), and Watch rendering."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    UrlConstraints,
    field_validator,
)

from client.presets import DEFAULT_PRESET
from client.upstream import MAX_HEADERS, MAX_HEADERS_BYTES, MAX_RULES, Upstream

from ..domain import WatchState, WebhookState
from ..store.codec import POLICY_DEFAULTS, iso_time, timestamp, watch_json
from ..store.hosts import HostState

MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 32
HttpUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2048, allowed_schemes=["http", "https"])]


class Policy(BaseModel):
    """How the workers poll the upstream: the client library's backoff, with a deadline."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    initial_wait_time: float = Field(
        POLICY_DEFAULTS["initial_wait_time"], ge=0.05, le=3600, description="first delay, seconds"
    )
    backoff_factor: float = Field(
        POLICY_DEFAULTS["backoff_factor"], ge=1, le=10, description="growth of each delay"
    )
    jitter: float = Field(
        POLICY_DEFAULTS["jitter"], ge=0, le=60, description="± seconds of random jitter"
    )
    max_interval: float = Field(
        POLICY_DEFAULTS["max_interval"], ge=0.05, le=86400, description="cap of one delay, seconds"
    )
    max_wait_time: float = Field(
        POLICY_DEFAULTS["max_wait_time"],
        ge=0.1,
        le=30 * 86400,
        description="deadline from registration, seconds",
    )
    max_attempts: int | None = Field(
        POLICY_DEFAULTS["max_attempts"],
        ge=1,
        le=100_000,
        description="most requests; null: only the deadline limits",
    )
    adaptive: bool = Field(
        POLICY_DEFAULTS["adaptive"],
        strict=True,
        description="poll where this upstream's jobs usually end, learned from its past jobs "
        "(within the bounds above; hints still win); false: the backoff alone",
    )


class UpstreamSpec(BaseModel):
    """How to poll and read the job API (`client.upstream.Upstream`; docs/upstreams.md): a
    preset, status rules and hints that replace the preset's, and headers every poll sends."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field(
        DEFAULT_PRESET, max_length=64, description="a preset's name (`GET /v1/presets`)"
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description=f"sent with every poll and nowhere else (at most {MAX_HEADERS}, "
        f"{MAX_HEADERS_BYTES} bytes); stored encrypted, shown as `***`",
    )
    rules: list[dict[str, Any]] | None = Field(
        None,
        max_length=MAX_RULES,
        description='tried in order, the first that matches decides: `{"path": <JMESPath>, '
        '"equals" | "in" | "exists": ..., "http_status": code or [codes], '
        '"then": "completed" | "error" | "pending"}`; replace the preset\'s',
    )
    progress: str | None = Field(None, max_length=1024, description="JMESPath to 0-100 or 'NN%'")
    eta: str | None = Field(None, max_length=1024, description="JMESPath to seconds left")
    error: str | None = Field(
        None, max_length=1024, description="JMESPath to the provider's error message"
    )
    result: str | None = Field(
        None, max_length=1024, description="JMESPath to what the job produced (kept, 16 KiB)"
    )
    progress_scale: Literal["percent", "fraction"] | None = Field(
        None, description="fraction: `progress` reads 0-1"
    )

    @field_validator("rules")
    @classmethod
    def _rules_are_json(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is not None:
            _check_json_document(value, "rules", MAX_METADATA_DEPTH)
        return value

    def upstream(self) -> Upstream:
        """The client library's Upstream; raises UpstreamSpecError naming the field."""
        return Upstream.from_json(self.model_dump(exclude_none=True))


class WatchCreate(BaseModel):
    """Register a job to watch."""

    model_config = ConfigDict(extra="forbid")

    status_url: HttpUrl = Field(description="the upstream's `GET` status URL")
    webhook_url: HttpUrl | None = Field(None, description="where the terminal webhook goes")
    policy: Policy = Field(default_factory=Policy)
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="yours, echoed back (a JSON object up to 4 KiB)"
    )
    upstream: UpstreamSpec | None = Field(
        None, description='another job API than `{"result": ...}`: preset, rules, headers'
    )
    callback: bool = Field(
        False,
        strict=True,
        description="answer a `callback_url` to hand the upstream as the job's webhook: a "
        "`POST` or `GET` there makes the watch due now (see `callback_url`)",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_document(value, "metadata", MAX_METADATA_DEPTH)
        size = len(json.dumps(value, separators=(",", ":")).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size} bytes of JSON; at most {MAX_METADATA_BYTES}")
        return value

    def spec(self) -> dict[str, Any]:
        """What the store keeps of the request (the immutable part of a watch): fields at
        their defaults are left out (`codec.full_spec` puts them back)."""
        return self.model_dump(mode="json", exclude_defaults=True)


def _check_json_document(value: Any, name: str, max_depth: int) -> None:
    """Refuse what JSON cannot carry: NaN and Infinity, strings that are not Unicode (a lone
    surrogate, which UTF-8 cannot encode); and nesting deeper than `max_depth`, which the
    recursive encoders of the store and the worker need not survive."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{name} nests deeper than {max_depth} levels")
        if isinstance(item, dict):
            for key, inner in item.items():
                _check_text(key, name)
                stack.append((inner, depth + 1))
        elif isinstance(item, list):
            stack.extend((inner, depth + 1) for inner in item)
        elif isinstance(item, str):
            _check_text(item, name)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{name} holds {item}, which JSON cannot carry")


def _check_text(text: str, name: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} holds a lone surrogate, which UTF-8 cannot carry") from None


class WebhookSummary(BaseModel):
    state: WebhookState
    attempts: int
    last_status_code: int | None


class Watch(BaseModel):
    id: str
    state: WatchState
    reason: str | None = Field(description="why it ended as error or timeout")
    status_url: str
    webhook_url: str | None
    metadata: dict[str, Any]
    policy: Policy
    attempts: int = Field(description="requests made to the upstream")
    last_result: str | None = Field(description="what the upstream last said")
    last_error: str | None = Field(description="the last transient failure")
    progress: float | None = Field(description="the upstream's last progress hint, 0-100")
    created_at: datetime
    updated_at: datetime
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    deadline: datetime
    finished_at: datetime | None
    webhook: WebhookSummary
    upstream: UpstreamSpec | None = Field(
        None, description="as registered, the headers' values shown as `***`"
    )
    result: Any = Field(None, description="what the job produced (`upstream.result`), when ended")
    result_truncated: bool = Field(
        False, description="`result` was over 16 KiB of JSON: its JSON text, cut"
    )


class WatchCreated(Watch):
    """The answer of a registration: the Watch, and with `callback: true` its callback URL."""

    callback_url: str | None = Field(
        None,
        description="with `callback: true` only: `POST` or `GET` it (no API key; the token in it "
        "is the credential) to make the watch due now. Each answer of the registration (the "
        "`201`, and each `200` replay with its Idempotency-Key) carries a fresh URL, all of them "
        "valid, at most 8 per watch (then null); only their hashes are stored, so no other "
        "request shows one",
    )


class WatchPage(BaseModel):
    items: list[Watch]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class WebhookCounts(BaseModel):
    pending: int = 0
    delivered: int = 0
    failed: int = 0


class HostStatus(BaseModel):
    """A host and port the tenant's watches polled, as the whole fleet sees it (every tenant's
    polls of the host count)."""

    host: str = Field(description="the normalised host (lower case, no port or user info)")
    port: int = Field(description="the port polled (the scheme's when the URL has none)")
    budget: float = Field(
        description="requests/s the fleet may send the host now, every port together (cut by "
        "429/503)"
    )
    rate_limit: float = Field(description="the configured most requests/s (VTW_HOST_RATE_LIMIT)")
    breaker: Literal["closed", "open", "half_open"] = Field(
        description="this port's breaker: open: polls wait out a cool-down; half_open: one "
        "request probes it"
    )
    open_until: datetime | None = Field(description="when an open breaker's cool-down ends")
    breaker_trips: int = Field(description="times the breaker opened (while the state is kept)")
    last_polled_at: datetime = Field(description="the fleet's last poll of the host (any port)")


class StatusSummary(BaseModel):
    total: int
    by_state: dict[WatchState, int]
    webhooks: WebhookCounts
    hosts: list[HostStatus] = Field(
        default_factory=list,
        description="the hosts the tenant's watches polled in the last hour, most recent first "
        "(at most 20); left out while there are none",
        exclude_if=lambda hosts: not hosts,
    )


class Health(BaseModel):
    status: Literal["ok", "unavailable"]


def render_watch(doc: Mapping[str, Any]) -> Watch:
    """The stored document as the API's Watch (`codec.watch_json`, which webhooks carry)."""
    return Watch.model_validate(watch_json(doc))


def summary_json(counts: dict[str, int], hosts: Sequence[HostState] = ()) -> dict[str, Any]:
    """`render_summary` as the JSON of its `StatusSummary` (its fields in its order, numbers of its
    types, `hosts` left out while there are none), for `GET /v1/status` to send as it is."""
    by_state = {state.value: int(counts.get(state.value, 0)) for state in WatchState}
    webhooks = {state.value: int(counts.get(f"wh:{state.value}", 0)) for state in WebhookState}
    webhooks.pop(WebhookState.NONE.value)
    summary: dict[str, Any] = {
        "total": sum(by_state.values()),
        "by_state": by_state,
        "webhooks": {name: webhooks.get(name, 0) for name in WebhookCounts.model_fields},
    }
    if hosts:
        summary["hosts"] = [
            {
                "host": h.host,
                "port": int(h.port),
                "budget": float(round(h.budget, 3)),
                "rate_limit": float(h.rate_limit),
                "breaker": h.breaker,
                "open_until": iso_time(h.open_until_ms),
                "breaker_trips": int(h.trips),
                "last_polled_at": iso_time(h.last_seen_ms),
            }
            for h in hosts
        ]
    return summary


def render_summary(counts: dict[str, int], hosts: Sequence[HostState] = ()) -> StatusSummary:
    """The tenant's counters as kept by the scripts (exact: never clamped, so drift shows),
    and the state of its hosts."""
    by_state = {state: counts.get(state.value, 0) for state in WatchState}
    webhooks = {state.value: counts.get(f"wh:{state.value}", 0) for state in WebhookState}
    webhooks.pop(WebhookState.NONE.value)
    return StatusSummary(
        total=sum(by_state.values()),
        by_state=by_state,
        webhooks=WebhookCounts(**webhooks),
        hosts=[
            HostStatus(
                host=h.host,
                port=h.port,
                budget=round(h.budget, 3),
                rate_limit=h.rate_limit,
                breaker=cast(Literal["closed", "open", "half_open"], h.breaker),
                open_until=timestamp(h.open_until_ms),
                breaker_trips=h.trips,
                last_polled_at=datetime.fromtimestamp(h.last_seen_ms / 1000, tz=UTC),
            )
            for h in hosts
        ],
    )


class DeliveryAttempt(BaseModel):
    at: datetime = Field(description="when the attempt ended")
    status_code: int | None = Field(description="the receiver's HTTP status; null on no answer")
    error: str | None = Field(description="why it failed: HTTP status, timeout, connection error")
    latency_ms: int
    next_attempt_at: datetime | None = Field(description="when the next retry is due, if any")


class Deliveries(BaseModel):
    items: list[DeliveryAttempt]


class WebhookSecret(BaseModel):
    secret: str = Field(description="signs every webhook (`whsec_...`)")
    previous: str | None = Field(description="the secret before a rotation, signing for 24 h")


def render_attempt(attempt: dict[str, Any]) -> DeliveryAttempt:
    return DeliveryAttempt.model_validate(
        {
            **attempt,
            "at": timestamp(attempt["at"]),
            "next_attempt_at": timestamp(attempt.get("next_attempt_at")),
        }
    )
