"""A watch's immutable spec (the registration), parsed once per distinct spec."""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from client.backoff import BackoffPolicy
from client.learned import upstream_key
from client.ssrf import carried_ipv4
from client.upstream import StatusReader, Upstream
from service.sealing import SealedSecretError, Sealer
from service.store.codec import HEADER_NAMES, SEALED_HEADERS, full_spec

# The cache is bounded by the size of the spec texts it keys on (metadata may take 4 KiB each)
# plus what each parsed spec holds (SPEC_OVERHEAD_BYTES): ~45,000 small specs. A worker whose
# polls cycle through more distinct watches than that parses a spec on most polls (~10 us).
CACHE_BUDGET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a poll or a delivery needs of a watch's spec."""

    status_url: str
    # The status URL parsed once (aiohttp would parse it on every request); the text itself
    # if it does not parse here (then the request fails as a transient error, like before).
    status_target: URL | str
    host: str  # the status URL's normalised host: what per-host limits and budgets count
    port: int  # the status URL's port (the scheme's when absent): a breaker is per host and port
    webhook_url: str | None
    webhook_host: str | None
    backoff: BackoffPolicy
    max_attempts: int | None
    upstream: str  # host and path template: whose learned durations the watch shares
    adaptive: bool  # polls follow the upstream's learned durations (policy.adaptive)
    callback: bool = False  # the upstream pushes the end: polls are only a safety net
    reader: StatusReader | None = None  # its status rules, compiled; None: `{"result": ...}`
    headers: dict[str, str] | None = None  # its upstream credentials, opened (never logged)
    unreadable: bool = False  # its sealed headers could not be opened (VTW_SECRET_KEYS rotated)

    def __repr__(self) -> str:  # the headers stay out of logs and tracebacks
        return f"WatchSpec({self.status_url!r}, headers={sorted(self.headers or ())})"


def normalized_host(url: str) -> str:
    """The host a URL reaches, as per-host limits count it: lower case, without userinfo, port
    or trailing dot, IP literals in one canonical form (so none of these dodge a limit)."""
    return endpoint(url)[0]


def endpoint(url: str) -> tuple[str, int]:
    """The normalised host and the port a URL reaches: its own port, else its scheme's (so
    `h` and `h:443` are one endpoint for an https URL)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    return _canonical_host((parts.hostname or "").rstrip(".")), port


@functools.lru_cache(maxsize=4096)  # few hosts, many watches of each
def _canonical_host(host: str) -> str:
    """IP literals in one form, an IPv6 spelling of an IPv4 host (mapped, translated, NAT64,
    6to4: the socket reaches that IPv4) as the IPv4 itself; names in IDNA."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(ip, ipaddress.IPv6Address):
            ip = carried_ipv4(ip) or ip
        return ip.compressed
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


DEFAULT_PORTS = {"http": 80, "https": 443}
# What a cached spec holds beyond its text (the parsed URL, the policy, the names): counted
# in the cache's budget, so small specs do not overrun it.
SPEC_OVERHEAD_BYTES = 1024


def parsed_url(url: str) -> URL | str:
    try:
        return URL(url)
    except ValueError:
        return url


# One shared (immutable) policy object per distinct policy: a few policies, many watches each.
shared_policy = functools.lru_cache(maxsize=1024)(BackoffPolicy)


class SpecCache:
    """Parses specs, keeping the most recently used ones within a byte budget."""

    def __init__(
        self,
        min_poll_interval: float,
        budget_bytes: int = CACHE_BUDGET_BYTES,
        sealer: Sealer | None = None,
    ) -> None:
        self.min_poll_interval = min_poll_interval
        self.sealer = sealer
        self.budget_bytes = budget_bytes
        self.size_bytes = 0
        self._specs: OrderedDict[str, WatchSpec] = OrderedDict()

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, spec_json: str) -> WatchSpec:
        spec = self._specs.get(spec_json)
        if spec is not None:
            self._specs.move_to_end(spec_json)
            return spec
        spec = self.parse(spec_json)
        self._specs[spec_json] = spec
        self.size_bytes += len(spec_json) + SPEC_OVERHEAD_BYTES
        while self.size_bytes > self.budget_bytes and len(self._specs) > 1:
            evicted, _ = self._specs.popitem(last=False)
            self.size_bytes -= len(evicted) + SPEC_OVERHEAD_BYTES
        return spec

    def parse(self, spec_json: str) -> WatchSpec:
        spec = full_spec(spec_json)
        policy = spec["policy"]
        backoff = shared_policy(
            initial_wait_time=policy["initial_wait_time"],
            backoff_factor=policy["backoff_factor"],
            jitter=policy["jitter"],
            max_interval=policy["max_interval"],
            min_delay=self.min_poll_interval,
        )
        webhook_url = spec.get("webhook_url")
        host, port = endpoint(spec["status_url"])
        reader, headers, unreadable = self._upstream(spec.get("upstream"))
        return WatchSpec(
            status_url=spec["status_url"],
            status_target=parsed_url(spec["status_url"]),
            host=host,
            port=port,
            webhook_url=webhook_url,
            webhook_host=normalized_host(webhook_url) if webhook_url else None,
            backoff=backoff,
            max_attempts=policy["max_attempts"],
            upstream=upstream_key(spec["status_url"]),
            # A watch told of the end by a push needs no learned schedule to find it.
            adaptive=policy["adaptive"] and not spec.get("callback", False),
            callback=spec.get("callback", False),
            reader=reader,
            headers=headers,
            unreadable=unreadable,
        )

    def _upstream(
        self, stored: dict[str, Any] | None
    ) -> tuple[StatusReader | None, dict[str, str] | None, bool]:
        """A spec's status rules (checked at registration, so they compile) and headers."""
        if not stored:
            return None, None, False
        reading = {k: v for k, v in stored.items() if k not in (SEALED_HEADERS, HEADER_NAMES)}
        reader = Upstream.from_json(reading).reader()
        sealed = stored.get(SEALED_HEADERS)
        if sealed is None:
            return reader, None, False
        try:
            if self.sealer is None:
                raise SealedSecretError("VTW_SECRET_KEYS is not set")
            return reader, self.sealer.open(sealed), False
        except SealedSecretError:
            return reader, None, True
