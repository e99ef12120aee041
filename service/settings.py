"""All configuration, from `VTW_*` environment variables (pydantic-settings), validated at start."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain import MAX_PARTITIONS
from .store.keys import NAMESPACE_PATTERN

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_WEBHOOK_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


REDIS_SCHEMES = ("redis", "rediss", "unix")
REDIS_URL_EXAMPLE = "redis://127.0.0.1:6379/0"
NETWORKS_EXAMPLE = "10.0.0.0/8,fd00::/8"
# How to make a key of VTW_SECRET_KEYS (service/sealing.py): 32 random bytes, URL-safe base64.
SECRET_KEY_COMMAND = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
SECRET_KEY_BYTES = 32
_URLSAFE_BASE64 = re.compile(r"[A-Za-z0-9_-]+={0,2}")
PUBLIC_URL_EXAMPLE = "https://vtwatch.example.com"


class ConfigurationError(ValueError):
    """A setting that cannot work, found at start-up: the message names the variable, what is
    wrong and a value that would do (never the value itself: it may be a secret)."""


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def check_redis_url(url: str) -> str:
    """The URL's shape as redis-py reads it, checked here so a mistake is one line, not a
    traceback from deep in the connection pool."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        problem = f"scheme {parts.scheme + '://'!r} is not" if parts.scheme else "has no scheme:"
        raise ValueError(
            f"{problem} redis://, rediss:// or unix:// (e.g. VTW_REDIS_URL={REDIS_URL_EXAMPLE})"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// names no socket path (e.g. unix:///run/redis.sock)")
        return url
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(
            f"the port is not a number from 1 to 65535 (e.g. VTW_REDIS_URL={REDIS_URL_EXAMPLE})"
        ) from None
    if not parts.hostname:
        raise ValueError(f"names no host (e.g. VTW_REDIS_URL={REDIS_URL_EXAMPLE})")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(
            f"the path must be a database number (e.g. VTW_REDIS_URL={REDIS_URL_EXAMPLE})"
        )
    return url


def check_public_url(url: str) -> str:
    """An http(s) URL with a host, no query or fragment (a path prefix is fine), without its
    trailing slash: callback URLs are `{it}/v1/callbacks/...`."""
    parts = urlsplit(url.strip())
    hint = f"(e.g. VTW_PUBLIC_URL={PUBLIC_URL_EXAMPLE})"
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL {hint}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"the port is not a number from 1 to 65535 {hint}") from None
    if not parts.hostname:
        raise ValueError(f"names no host {hint}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"must have no query or fragment {hint}")
    return url.strip().rstrip("/")


MAX_PROCESSES = 1024


def parse_processes(value: object) -> int | Literal["auto"]:
    """A count of processes: a whole number from 1 to `MAX_PROCESSES`, or `auto` (one per core)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise ValueError(f"must be a whole number from 1 to {MAX_PROCESSES}, or auto")
    return int(text)


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        detail = "" if "does not appear" in str(exc) else f" ({exc})"
        raise ValueError(
            f"{text!r} is not a network in CIDR form{detail} "
            f"(e.g. VTW_ALLOWED_NETWORKS={NETWORKS_EXAMPLE})"
        ) from None


def _secret_key(value: object, number: int, count: int) -> str:
    """One key of VTW_SECRET_KEYS in its canonical form (padded URL-safe base64). The error
    says which key and what is wrong with it, never the key."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    which = f"key {number} of {count}" if count > 1 else "the key"
    how = (
        f"each is {SECRET_KEY_BYTES} random bytes in URL-safe base64, "
        f"e.g. the output of `{SECRET_KEY_COMMAND}`"
    )
    text = value.strip() if isinstance(value, str) else ""
    if not _URLSAFE_BASE64.fullmatch(text):
        raise ValueError(f"{which} is not URL-safe base64 ({how})")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"{which} is not URL-safe base64 ({how})") from None
    if len(raw) != SECRET_KEY_BYTES:
        raise ValueError(f"{which} is {len(raw)} bytes, not {SECRET_KEY_BYTES} ({how})")
    return base64.urlsafe_b64encode(raw).decode("ascii")


class Settings(BaseSettings):
    # Errors never carry the values (VTW_API_KEYS and VTW_SECRET_KEYS hold secrets).
    model_config = SettingsConfigDict(
        env_prefix="VTW_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    redis_url: str | None = Field(
        None,
        description="Redis URL; unset: embedded in-memory store",
        examples=[REDIS_URL_EXAMPLE],
    )
    api_keys: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="`tenant:key,...`, parsed to key -> tenant; unset: open, loopback only",
        examples=["acme:<a long random key>"],
    )
    allowed_networks: Annotated[list[Network], NoDecode] = Field(
        default_factory=list,
        description="CIDRs the SSRF guard admits, comma-separated",
        examples=[NETWORKS_EXAMPLE],
    )
    secret_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (),
        description="keys that encrypt upstream credentials at rest, comma-separated: the first "
        "encrypts, every one decrypts (service/sealing.py); unset: no upstream headers with Redis",
        examples=["<new key>,<old key>"],
    )
    namespace: str = Field("vtw", pattern=NAMESPACE_PATTERN.pattern)
    redis_cluster: bool = Field(False, description="VTW_REDIS_URL names a node of a Redis Cluster")
    partitions: int = Field(
        1,
        ge=1,
        le=MAX_PARTITIONS,
        description="schedule partitions, each under its own hash tag; fixed for a deployment",
    )
    redis_wait_replicas: int | None = Field(
        None,
        ge=0,
        le=16,
        description="replicas that must acknowledge a registration or a delivered webhook "
        "before it is answered (WAIT); unset: 1 on a cluster, else 0",
        examples=[1],
    )
    redis_wait_timeout: float = Field(
        1.0, gt=0, le=60, description="seconds a promised write waits for its replicas at most"
    )
    lease_seconds: float = Field(30.0, gt=0.5, le=3600)
    worker_concurrency: int = Field(256, ge=1, le=100_000)
    per_host_concurrency: int = Field(64, ge=1, le=100_000)
    request_timeout: float = Field(10.0, gt=0, le=300, description="seconds per upstream poll")
    shutdown_grace_seconds: float = Field(10.0, ge=0, le=3600)
    retention_seconds: float = Field(7 * 86400.0, gt=0)
    idempotency_ttl_seconds: int = Field(86400, ge=60)
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_WEBHOOK_SCHEDULE
    webhook_timeout: float = Field(15.0, gt=0, le=300)
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="a worker's /metrics and /healthz port; 0: off"
    )
    metrics_host: str = Field("0.0.0.0", description="the address a worker's port listens on")
    worker_processes: int | Literal["auto"] = Field(
        1,
        description="worker processes `vtwatch worker` runs under one supervisor; auto: one per "
        "core (worker/supervisor.py)",
        examples=["auto"],
    )
    min_poll_interval: float = Field(
        1.0, ge=0.01, le=3600, description="the floor of every poll delay, hints included"
    )
    max_active_watches: int = Field(
        100_000, ge=1, description="pending watches per tenant; beyond, registration is 429"
    )
    host_rate_limit: float = Field(
        20.0,
        gt=0,
        le=1_000_000,
        description="requests per second to one upstream host, summed over every worker",
    )
    host_burst: float | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="requests a quiet host may get at once above its rate (the bucket's size); "
        "unset: a twentieth of the rate limit, at least 1",
        examples=[5],
    )
    host_breaker_cooldown: float = Field(
        15.0,
        ge=0.1,
        le=3600,
        description="seconds a host whose polls mostly fail is left alone before one probe",
    )
    webhook_host_rate_limit: float = Field(
        50.0,
        gt=0,
        le=1_000_000,
        description="webhook POSTs per second to one receiver host, summed over every worker "
        "(no 0: a limit of 1000000 is none in practice)",
    )
    webhook_host_burst: float | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="POSTs a quiet receiver host may get at once above its rate; unset: a "
        "twentieth of the rate limit, at least 1",
        examples=[5],
    )
    learned_refresh_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds a worker uses an upstream's learned durations before reading "
        "them again",
    )
    public_url: str | None = Field(
        None,
        description="the API's address as callers and upstreams reach it, for `callback_url`; "
        "unset: the request's base URL",
        examples=[PUBLIC_URL_EXAMPLE],
    )
    metrics_refresh_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds between the API's reads of the schedule's backlog for /metrics "
        "(2·P + 1 Redis commands each; a scrape reads none)",
    )

    @property
    def wait_timeout_ms(self) -> int:
        return int(self.redis_wait_timeout * 1000)

    @property
    def wait_replicas(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_cluster else 0

    @property
    def host_burst_size(self) -> float:
        """The bucket's size. The default keeps every second within 105 % of the limit as
        granted, so requests that bunch on their way (a new connection, a busy event loop)
        still arrive within 110 %."""
        if self.host_burst is not None:
            return self.host_burst
        return max(1.0, self.host_rate_limit / 20)

    @property
    def webhook_host_burst_size(self) -> float:
        """A receiver host's bucket: sized by the same rule as an upstream host's."""
        if self.webhook_host_burst is not None:
            return self.webhook_host_burst
        return max(1.0, self.webhook_host_rate_limit / 20)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        keys: dict[str, str] = {}
        for pair in _split(value):
            tenant, sep, key = pair.partition(":")
            if not sep or not tenant or not key:
                raise ValueError("VTW_API_KEYS takes `tenant:key` pairs separated by commas")
            if keys.get(key, tenant) != tenant:  # the message names tenants, never the key
                raise ValueError(
                    f"VTW_API_KEYS lists one key for two tenants ({keys[key]!r} and {tenant!r}); "
                    "a key belongs to one tenant"
                )
            keys[key] = tenant
        return keys

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tenant in value.items():
            if not key.strip():
                raise ValueError("an API key must not be empty")
            if not NAMESPACE_PATTERN.match(tenant):
                raise ValueError(f"tenant names use letters, digits, '.', '_' and '-': {tenant!r}")
        return value

    @field_validator("secret_keys", mode="before")
    @classmethod
    def _parse_secret_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = _split(value)
        if isinstance(value, list | tuple):
            return tuple(
                _secret_key(key, number, len(value)) for number, key in enumerate(value, 1)
            )
        return value

    @field_validator("worker_processes", mode="before")
    @classmethod
    def _parse_worker_processes(cls, value: object) -> object:
        return parse_processes(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return None if value is None else check_redis_url(value)

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else check_public_url(value)

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [_network(part) for part in _split(value)]
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        return _split(value) if isinstance(value, str) else value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= delay < math.inf for delay in value):
            raise ValueError("retry delays must be finite and not negative")
        return value

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        # A finished watch is kept while its webhook is retried; a retention shorter than the
        # whole schedule (with its +20 % jitter) would be a promise the sweep keeps breaking.
        needed = sum(self.webhook_retry_schedule) * 1.2
        if self.retention_seconds < needed:
            raise ValueError(
                f"VTW_RETENTION_SECONDS ({self.retention_seconds:g}) must be at least the webhook "
                f"retry schedule's length with jitter ({needed:g} s; e.g. "
                f"VTW_RETENTION_SECONDS={max(needed, 7 * 86400.0):.0f})"
            )
        return self


def example(name: str) -> str | None:
    """A good value of setting `name`, as its environment variable spells it: the field's
    example, else its default (None when it has neither)."""
    field = Settings.model_fields.get(name)
    if field is None:
        return None
    if field.examples:
        return str(field.examples[0])
    value = field.get_default(call_default_factory=True)
    if value is None or value in ([], {}):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
