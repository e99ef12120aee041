"""Fleet-wide state of upstream hosts in Redis: a request budget per host shared fairly between
tenants, circuit breakers per port of a host, for the fleet and for each tenant.

Each normalised host has one hash (`Keys.host`, a hash tag of its own), two sorted sets for the
fair shares (`Keys.fair`, `Keys.backlog`) and the breakers of the ports its watches poll
(`Keys.breaker`), all under the same tag (one Redis Cluster slot), touched only by the host
scripts, one host per call (`lua/_host.lua`, `host_*.lua`):

* a token bucket refilled at the host's *budget* (requests/s for every worker together, at most
  `VTW_HOST_RATE_LIMIT`) and `VTW_HOST_BURST` deep; workers take tokens for a whole batch of
  polls in one call (`take`);
* the budget is shared max-min fairly between the tenants that want it: a tenant alone may
  take it all; while another tenant was refused within `BACKLOG_MS`, each takes at most its
  equal share (a virtual clock advancing at the budget divided by the refused tenants, each
  tenant's tag one step per request), and what a tenant leaves unused goes to the others
  (work-conserving). O(1) Redis work per take and tenant (a few sorted-set operations on sets
  of the host's recent tenants);
* the budget follows the host's answers (AIMD): a 429 or 503 halves it (once per second for the
  whole fleet, never below a 64th of the limit), answers that are all good add back 5 % of the
  limit per second; a `Retry-After` holds the budget down until it has passed (at most 60 s);
* a circuit breaker per host, port and *tenant*: when at least half of a tenant's polls of the
  port within 10 s fail (no answer, or 5xx), and they are 10 or more or the last 5 failed in a
  row (a budget cut to its floor by 503s sends fewer than 10 in 10 s), or 10 in a row fail, that
  tenant's polls of the port are left alone for `VTW_HOST_BREAKER_COOLDOWN`, then one of its
  requests probes; its answer closes the breaker or opens it for another cool-down. One
  tenant's broken paths thus cost that tenant alone;
* a fleet breaker per host and port for real outages: it opens when a second tenant's breaker
  opens within a cool-down of another's while no tenant's polls of the port mostly answered
  within the window; then nobody's requests go until the cool-down ends, and one request
  fleet-wide probes (the tenant whose probe just failed yields it to another that is waiting).
  While a probe is out, the other polls wait for its lease to end, at most a cool-down.

Webhook receivers' hosts have a budget of their own (`Keys.host(host, "r")`, shared fairly the
same way, no breakers: deliveries have their own retry schedule).

Times are Redis server time. The hosts and ports a tenant's watches polled are noted apart
(`Keys.tenant_hosts`), so `GET /v1/status` shows a tenant only the hosts it uses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .keys import HostKind, Keys
from .scripts import ScriptCall, load_scripts, run_scripts, text

logger = logging.getLogger(__name__)
Entry = tuple[int, str]  # (port, tenant): what a take or a report is about on one host

SCRIPTS = ("host_take", "host_report", "host_read", "tenant_hosts")
PRELUDES = ("_prelude", "_host")

HOST_TTL_MS = 3_600_000  # a host's state is forgotten after an hour without polls
CUT_FACTOR = 0.5  # a 429 or 503 halves the budget...
CUT_INTERVAL_MS = 1_000  # ...at most once a second, however many workers saw one
GROWTH_PER_SECOND = 0.05  # good answers add back this share of the limit per second
FLOOR_SHARE = 1 / 64  # the budget never falls below this share of the limit
MAX_QUIET_MS = 60_000  # the longest Retry-After that holds the budget down
BREAKER_WINDOW_MS = 10_000
BREAKER_MIN_POLLS = 10
BREAKER_FAILURE_RATIO = 0.5
BREAKER_STREAK = 5  # failed polls in a row (fleet-wide, however slowly) that open a breaker
TENANT_HOSTS_MAX = 50  # hosts kept per tenant
TENANT_HOSTS_TTL_MS = 86_400_000
STATUS_HOSTS = 20  # hosts `GET /v1/status` shows: the tenant's most recently polled
STATUS_SEEN_MS = 3_600_000  # ...within the last hour
BACKLOG_MS = 2_000  # a tenant refused within this long wants more than it got: a fair share
BREAKER_STATES = frozenset({"closed", "open", "half_open"})
LAST_TIME_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: a stored time shown must be a date


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """What the workers configure (`VTW_HOST_*`)."""

    rate_limit: float
    burst: float
    cooldown_seconds: float
    probe_lease_seconds: float  # a probe that never reports frees its place after this long


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a take of `n` requests: the first `granted` may go now."""

    granted: int
    wait_ms: int  # until the next request could be granted
    budget: float  # requests/s now (unrounded: a tiny limit is no 0)
    breaker: str  # the breaker that decided: 'closed', 'open' or 'half_open'
    probe: str | None  # the id of the breaker's probe when the first granted request is it
    share: float  # requests/s this tenant's refused requests may come back at


@dataclass(slots=True)
class Report:
    """What a worker's polls of one port of a host, for one tenant, saw since its last
    report."""

    ok: int = 0  # answered (any HTTP status but 5xx), 429 included
    failed: int = 0  # no answer (connection error, timeout) or 5xx
    throttled: int = 0  # 429 or 503
    quiet_ms: int = 0  # the longest Retry-After of a 429 or 503, clamped
    probe: str | None = None
    probe_ok: bool = False


@dataclass(frozen=True, slots=True)
class HostState:
    host: str
    port: int  # the breaker's; the budget is the host's, every port's
    budget: float  # requests/s now
    rate_limit: float
    breaker: str  # 'closed', 'open' or 'half_open'
    open_until_ms: int | None
    trips: int
    last_seen_ms: int
    now_ms: int  # Redis time when read


class HostBook:
    """The host scripts, each wrapped in a typed method."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._scripts = load_scripts(redis, SCRIPTS, PRELUDES)

    async def take(
        self,
        wants: Mapping[str, Mapping[Entry, int]],
        policy: HostPolicy,
        probe_id: str,
        kind: HostKind = "h",
    ) -> dict[str, dict[Entry, Grant] | Exception]:
        """Take `wants[host][(port, tenant)]` requests of each host's budget, each tenant its
        fair share, through each port's breakers (upstream hosts only: `kind` "h"): one script
        call per host, all in one round trip. A host whose call failed gets its error (the
        other hosts their grants); a failed round trip raises. Never retried: a repeat after a
        lost reply would take twice."""
        hosts = list(wants)
        breakers = kind == "h"
        calls: list[ScriptCall] = []
        for host in hosts:
            keys = [self.keys.host(host, kind), self.keys.fair(host, kind)]
            keys.append(self.keys.backlog(host, kind))
            args: list[Any] = [
                host,
                policy.rate_limit,
                policy.burst,
                probe_id,
                int(policy.probe_lease_seconds * 1000),
                int(policy.cooldown_seconds * 1000),
                HOST_TTL_MS,
                BACKLOG_MS,
                "1" if breakers else "0",
            ]
            for (port, tenant), n in wants[host].items():
                args += [port, tenant, n]
                if breakers:
                    keys += [self.keys.breaker(host, port), self.keys.breaker(host, port, tenant)]
            calls.append((self._scripts["host_take"], keys, args))
        results = await run_scripts(self.redis, calls, raise_from=0)
        return {
            host: result if isinstance(result, Exception) else _grants(list(wants[host]), result)
            for host, result in zip(hosts, results, strict=True)
        }

    def report_call(
        self, host: str, reports: Mapping[Entry, Report], policy: HostPolicy
    ) -> ScriptCall:
        """The reports of a host's (port, tenant) entries as one script call, for the caller's
        pipeline; its result is `(breakers tripped, cut)` (see `reported`)."""
        throttled = sum(r.throttled for r in reports.values())
        quiet = max(0, min(MAX_QUIET_MS, max((r.quiet_ms for r in reports.values()), default=0)))
        keys = [self.keys.host(host)]
        entries: list[Any] = []
        for (port, tenant), report in reports.items():
            probe_ok = "1" if report.probe_ok else "0"
            entries += [port, tenant, report.ok, report.failed, report.probe or "", probe_ok]
            keys += [self.keys.breaker(host, port), self.keys.breaker(host, port, tenant)]
        return (
            self._scripts["host_report"],
            keys,
            [
                host,
                policy.rate_limit,
                policy.burst,
                throttled,
                quiet,
                int(policy.cooldown_seconds * 1000),
                HOST_TTL_MS,
                CUT_FACTOR,
                CUT_INTERVAL_MS,
                GROWTH_PER_SECOND,
                FLOOR_SHARE,
                BREAKER_WINDOW_MS,
                BREAKER_MIN_POLLS,
                BREAKER_FAILURE_RATIO,
                BREAKER_STREAK,
                *entries,
            ],
        )

    @staticmethod
    def reported(result: Any) -> tuple[int, bool]:
        """(the breakers the report opened, it cut the budget) from a report call's result."""
        tripped, cut = result
        return int(tripped), bool(int(cut))

    def tenant_hosts_call(self, tenant: str, endpoints: Iterable[tuple[str, int]]) -> ScriptCall:
        """Note that `tenant`'s watches polled these (host, port) (for the caller's pipeline)."""
        return (
            self._scripts["tenant_hosts"],
            [self.keys.tenant_hosts(tenant)],
            [TENANT_HOSTS_MAX, TENANT_HOSTS_TTL_MS, *(f"{p} {h}" for h, p in endpoints)],
        )

    async def read(self, host: str, port: int, tenant: str | None = None) -> HostState | None:
        """The host's budget and the port's breaker: the fleet's, or what holds `tenant`."""
        keys = [self.keys.host(host), self.keys.breaker(host, port)]
        if tenant is not None:
            keys.append(self.keys.breaker(host, port, tenant))
        return _state(port, await self._scripts["host_read"](keys=keys))

    async def of_tenant(self, tenant: str) -> list[HostState]:
        """The state of the hosts `tenant`'s watches polled in the last hour, the most recent
        first, at most `STATUS_HOSTS` (a host whose state expired is left out). A host whose
        state cannot be read or makes no sense is left out too (logged at debug level): the
        status of the others is still shown; only a store that cannot be asked at all raises."""
        try:
            noted = cast(
                list[tuple[str | bytes, float]],
                await self.redis.zrevrange(
                    self.keys.tenant_hosts(tenant), 0, STATUS_HOSTS - 1, withscores=True
                ),
            )
        except ResponseError as exc:  # the list itself is unreadable: no hosts to show
            logger.debug("status: the hosts of tenant %s cannot be read: %s", tenant, exc)
            return []
        endpoints = []
        for member, polled_ms in noted:
            digits, _, host = text(member).partition(" ")
            if host and digits.isdigit():  # (a host noted before breakers were per port: left out)
                endpoints.append((host, int(digits), polled_ms))
        if not endpoints:
            return []
        calls: list[ScriptCall] = [
            (
                self._scripts["host_read"],
                [self.keys.host(h), self.keys.breaker(h, p), self.keys.breaker(h, p, tenant)],
                [],
            )
            for h, p, _ in endpoints
        ]
        results = await run_scripts(self.redis, calls, raise_from=0)
        states, unreadable = [], []
        for (host, port, polled_ms), result in zip(endpoints, results, strict=True):
            try:
                if isinstance(result, Exception):
                    raise result
                state = _state(port, result)
            except Exception as exc:
                unreadable.append(f"{host}:{port} ({type(exc).__name__}: {exc})")
                continue
            if state is not None and polled_ms >= state.now_ms - STATUS_SEEN_MS:
                states.append(state)
        if unreadable:
            logger.debug("status: left out hosts whose state cannot be read: %s", unreadable)
        return states


def _grants(entries: list[Entry], result: list[Any]) -> dict[Entry, Grant]:
    """A take's answer for one host: its budget, then five values per entry."""
    budget = float(result[0])
    return {
        entry: Grant(
            int(result[1 + 5 * i]),
            int(result[2 + 5 * i]),
            budget,
            text(result[3 + 5 * i]),
            text(result[4 + 5 * i]) or None,
            float(result[5 + 5 * i]),
        )
        for i, entry in enumerate(entries)
    }


def _state(port: int, result: list[Any]) -> HostState | None:
    if not result:
        return None
    host, budget, limit, breaker, open_until, trips, seen, now = result
    if text(breaker) not in BREAKER_STATES:
        raise ValueError(f"breaker state {text(breaker)[:20]!r}")
    for ms in (open_until, seen, now):
        if not 0 <= int(ms) <= LAST_TIME_MS:
            raise ValueError(f"time {int(ms)} ms")
    return HostState(
        host=text(host),
        port=port,
        budget=int(budget) / 1000,
        rate_limit=int(limit) / 1000,
        breaker=text(breaker),
        open_until_ms=int(open_until) or None,
        trips=int(trips),
        last_seen_ms=int(seen),
        now_ms=int(now),
    )
