"""The workers' side of the fleet-wide host budgets and breakers (`service.store.hosts`): the
poller's of upstream hosts (budget and breakers), the dispatcher's of webhook receivers' hosts
(`kind` "r": a budget alone, nothing reported).

Admission: every poll (or POST) asks before its request, for its tenant; the asks of one
event-loop turn (a claimed batch) go to Redis together, one script call per host (for all its
ports and tenants) in one round trip. Denied ones are put off in line: the k-th denied one of a
tenant on a host waits for the k-th next token of that tenant's share, so they come back at the
rate the budget allows it, not all at once. A host with a large budget (`PREFETCH_SECONDS` of
it at least `MIN_PREFETCH` requests) is asked for that many more tokens, which the next polls
spend without a round trip (or drop after `CREDIT_SECONDS`): a busy host then costs one take
per few hundred polls, and a small budget is taken exactly as asked.

Reports: what each poll saw (answered, failed, throttled, the probe's answer) is summed per host,
port and tenant and sent with the poller's next batched save, in the same pipeline: at most once (a
report lost with a failed save is not sent again; the budget only reacts a little later).
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from client.upstream import Observation
from service.metrics import BREAKER_TRIPS, HOST_BUDGET_CUTS
from service.settings import Settings
from service.store.hosts import Entry, HostBook, HostPolicy, Report
from service.store.keys import HostKind
from service.store.scripts import ScriptCall

from .capped import CappedDict
from .loop import WriteBatch
from .retry import outage_backoff

logger = logging.getLogger(__name__)
THROTTLING = frozenset({429, 503})
NOTE_TENANT_EVERY = 10.0  # seconds between notes that a tenant's watches poll a host
NOTED_MAX = 100_000  # hosts, or (tenant, host) pairs, remembered before the memory is cleared
PROBE_LEASE_MARGIN = 5.0  # seconds a probe may take beyond the request timeout
MIN_RATE = 1e-6  # requests/s a budget counts as at least (never a division by zero)
SPREAD = 0.1  # denied polls come back up to this share later, so they do not return together
# ...and those of an open breaker up to this share (they wait a cool-down or a probe's lease,
# every watch of the host at once: spread them wider)
BREAKER_SPREAD = 0.2
PREFETCH_SECONDS = 0.05  # of a host's budget taken ahead for the next polls...
MIN_PREFETCH = 10  # ...when that is at least this many requests (else none: exact at 20/s)
MAX_PREFETCH = 256
CREDIT_SECONDS = 0.1  # tokens taken ahead and not spent by then are dropped


@dataclass(frozen=True, slots=True)
class Admission:
    """May a poll go now? If not, for how long it is put off and why ('budget', 'breaker', or
    'budget_unavailable': the host's state could not be read; no request without it)."""

    go: bool
    wait_seconds: float = 0.0
    reason: str = ""
    probe: str | None = None  # this poll is the breaker's probe


GRANTED = Admission(True)
Ask = tuple[str, int, str]  # (host, port, tenant): one request's claim on a host's budget


def policy_of(settings: Settings) -> HostPolicy:
    return HostPolicy(
        rate_limit=settings.host_rate_limit,
        burst=settings.host_burst_size,
        cooldown_seconds=settings.host_breaker_cooldown,
        probe_lease_seconds=settings.request_timeout + PROBE_LEASE_MARGIN,
    )


def receiver_policy_of(settings: Settings) -> HostPolicy:
    """A webhook receiver's budget (`VTW_WEBHOOK_HOST_*`); it has no breakers: the cool-down and
    the probe's lease are never read."""
    return HostPolicy(
        rate_limit=settings.webhook_host_rate_limit,
        burst=settings.webhook_host_burst_size,
        cooldown_seconds=settings.host_breaker_cooldown,
        probe_lease_seconds=settings.webhook_timeout + PROBE_LEASE_MARGIN,
    )


def failed(seen: Observation) -> bool:
    """No answer, or a 5xx: what trips a breaker (a 4xx, 429 or a garbled body is an answer;
    an internal error of ours says nothing of the host)."""
    if seen.internal:
        return False
    return seen.status is None and (seen.http_status is None or seen.http_status >= 500)


class HostBudget:
    """One worker loop's asks of a kind of hosts' budgets: upstream hosts (`kind` "h", the
    poller's, with breakers and reports) or webhook receivers' (`kind` "r", the dispatcher's,
    a budget alone: `observe` and `drain` are not for it)."""

    def __init__(
        self,
        book: HostBook,
        policy: HostPolicy,
        rng: random.Random,
        kind: HostKind = "h",
        name: str = "poller",
    ) -> None:
        self.book = book
        self.policy = policy
        self.rng = rng
        self.kind: HostKind = kind
        self.name = name  # of the loop, in log lines
        self._asks: WriteBatch[Ask, Admission] = WriteBatch(self._admit_all)
        self._reports: dict[str, dict[Entry, Report]] = {}
        self._tenants: dict[str, set[tuple[str, int]]] = {}
        self._noted: dict[tuple[str, str, int], float] = CappedDict(NOTED_MAX)
        self._id = secrets.token_hex(4)
        self._takes = 0
        # hosts whose take failed: failures in a row
        self._failing: dict[str, int] = CappedDict(NOTED_MAX)
        # host -> tokens to take ahead (from its budget)
        self._prefetch: dict[str, int] = CappedDict(NOTED_MAX)
        # tokens taken ahead, until
        self._credit: dict[Ask, list[float]] = CappedDict(NOTED_MAX)  # [tokens, until]

    def spend_credit(self, host: str, port: int, tenant: str) -> Admission | None:
        """One request of `tenant` to `port` of `host` from the tokens taken ahead for it, if
        any are left (no round trip, and no coroutine: most polls of a busy host go this way);
        else None."""
        key = (host, port, tenant)
        credit = self._credit.get(key)
        if credit is not None:
            if time.monotonic() < credit[1]:
                credit[0] -= 1  # spent in place: no re-insertion per poll
                if credit[0] <= 0:
                    del self._credit[key]
                return GRANTED
            del self._credit[key]
        return None

    async def ask(self, host: str, port: int, tenant: str) -> Admission:
        """Ask Redis for one request of `tenant` to `port` of `host`, with this turn's other
        asks (the credit not consulted: see `spend_credit`; raises the store's error: the
        caller puts the poll off)."""
        return await self._asks.add((host, port, tenant))

    async def _admit_all(self, asks: list[Ask]) -> list[Admission]:
        self._takes += 1
        wants: dict[str, Counter[Entry]] = {}
        for host, port, tenant in asks:
            wants.setdefault(host, Counter())[port, tenant] += 1
        for host, entries in wants.items():
            for entry in entries:
                entries[entry] += self._prefetch.get(host, 0)
        probe_id = f"{self._id}:{self._takes:x}"
        if self.kind == "h":  # the upstream's call as it always was (a book's fakes take 3)
            grants = await self.book.take(wants, self.policy, probe_id)
        else:
            grants = await self.book.take(wants, self.policy, probe_id, kind=self.kind)
        asked: Counter[Ask] = Counter()
        in_line: Counter[tuple[str, str]] = Counter()  # denied for the budget so far
        unavailable = {h: self._failed(h, e) for h, e in grants.items() if isinstance(e, Exception)}
        for host in grants.keys() - unavailable.keys():
            if self._failing.pop(host, 0):
                logger.info("%s: the budget of host %s can be taken again", self.name, host)
        admissions = []
        for ask in asks:
            host, port, tenant = ask
            if host in unavailable:  # this host only: the others' polls go on
                wait = unavailable[host] * self.rng.uniform(1, 1 + SPREAD)
                admissions.append(Admission(False, wait, "budget_unavailable"))
                continue
            by_entry = grants[host]
            assert not isinstance(by_entry, Exception)
            grant, place = by_entry[port, tenant], asked[ask]
            asked[ask] += 1
            if place < grant.granted:
                admissions.append(Admission(True, probe=grant.probe if place == 0 else None))
                continue
            wait = grant.wait_ms / 1000
            if grant.breaker == "closed":
                wait += in_line[host, tenant] / max(grant.share, MIN_RATE)
                in_line[host, tenant] += 1
                reason = "budget"
                spread = SPREAD
            else:
                reason, spread = "breaker", BREAKER_SPREAD
            admissions.append(Admission(False, wait * self.rng.uniform(1, 1 + spread), reason))
        self._keep_credit(asked, grants)
        return admissions

    def _keep_credit(self, asked: Counter[Ask], grants: dict[str, Any]) -> None:
        """Keep the tokens granted beyond this turn's asks for the next polls (a closed
        breaker's only), and size the next prefetch of each host from its budget now."""
        until = time.monotonic() + CREDIT_SECONDS
        for host, by_port in grants.items():
            if isinstance(by_port, Exception):
                self._prefetch.pop(host, None)
                continue
            for (port, tenant), grant in by_port.items():
                extra = grant.granted - asked[host, port, tenant]
                if extra > 0 and grant.breaker == "closed" and not grant.probe:
                    self._credit[host, port, tenant] = [extra, until]
                ahead = int(grant.budget * PREFETCH_SECONDS)
                self._prefetch[host] = min(MAX_PREFETCH, ahead) if ahead >= MIN_PREFETCH else 0

    def _failed(self, host: str, error: Exception) -> float:
        """Count a failed take of `host`'s budget (logged once per streak); how long its polls
        are put off."""
        failures = self._failing[host] = self._failing.get(host, 0) + 1
        log = logger.warning if failures == 1 else logger.debug
        log(
            "%s: taking the budget of host %s failed (%d in a row): %s",
            self.name,
            host,
            failures,
            error,
        )
        return outage_backoff(failures)

    def observe(
        self, tenant: str, host: str, port: int, seen: Observation, probe: str | None
    ) -> None:
        """Count what one poll of `port` of `host` saw, for the next report (an internal error
        of ours counts neither way; a probe that met one is not reported: its lease lapses)."""
        self._note(tenant, host, port)
        if seen.internal:
            return
        report = self._reports.setdefault(host, {}).get((port, tenant))
        if report is None:
            report = self._reports[host][port, tenant] = Report()
        bad = failed(seen)
        if bad:
            report.failed += 1
        else:
            report.ok += 1
        if seen.http_status in THROTTLING:
            report.throttled += 1
            if seen.retry_after is not None and math.isfinite(seen.retry_after):
                quiet_ms = int(min(max(seen.retry_after, 0.0), 86400.0) * 1000)
                report.quiet_ms = max(report.quiet_ms, quiet_ms)
        if probe is not None:
            report.probe, report.probe_ok = probe, not bad

    def _note(self, tenant: str, host: str, port: int) -> None:
        now = time.monotonic()
        if now - self._noted.get((tenant, host, port), -math.inf) < NOTE_TENANT_EVERY:
            return
        self._noted[tenant, host, port] = now
        self._tenants.setdefault(tenant, set()).add((host, port))

    def drain(self) -> tuple[list[ScriptCall], int]:
        """The reports (and tenant notes) gathered since the last drain, as script calls for
        the caller's pipeline; and how many of them, first, are reports."""
        calls = [self.book.report_call(h, r, self.policy) for h, r in self._reports.items()]
        reports = len(calls)
        calls += [self.book.tenant_hosts_call(t, sorted(h)) for t, h in self._tenants.items()]
        self._reports, self._tenants = {}, {}
        return calls, reports

    def settle(self, results: list[Any], reports: int) -> None:
        """Count what the reports did; an error is logged (the budget reacts a little later)."""
        for result in results:
            if isinstance(result, Exception):
                logger.warning("poller: a host report or note failed: %s", result)
        for result in results[:reports]:
            if isinstance(result, Exception):
                continue
            tripped, cut = HostBook.reported(result)
            if tripped:
                BREAKER_TRIPS.inc(tripped)
            if cut:
                HOST_BUDGET_CUTS.inc()
