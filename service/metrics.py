"""Prometheus metrics of every process, in one place (prometheus-client's default registry).

Names follow Prometheus' rules: the `vtwatch_` prefix, base units (seconds), `_total` counters,
and no watch ids, tenants, URLs or hosts as labels (unbounded cardinality, and private).
The API serves them at `GET /metrics`; a worker on its own port (`VTW_METRICS_PORT`).

What every poll updates is a `LoopCounter` or `LoopHistogram`: prometheus-client's own take a
lock on each update (a histogram two), a cost the poller's hot path would pay several times per
poll; these are updated by the one thread that runs the event loop and read at scrape time
(on that loop here: both the API's and the worker's `/metrics` handlers are coroutines).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry


class LoopCounter(Collector):
    """A counter by one label with a fixed set of values, updated without a lock: only ever
    from one thread (a worker's event loop). A scrape reads a copy of its counts."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        values: Iterable[str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts = dict.fromkeys(values, 0)
        registry.register(self)

    def inc(self, value: str) -> None:
        self.counts[value] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in list(self.counts.items()):
            family.add_metric([value], count)
        yield family


class LoopHistogram(Collector):
    """A histogram updated without a lock: only ever from one thread (a worker's event loop).
    A scrape reads a copy of its counts (from another thread, one taken between two updates
    may be off by the update in progress, never torn)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # `le`: a bound is inside
        self.sum += amount

    def collect(self) -> Iterator[Metric]:
        counts, total, cumulative = list(self.counts), self.sum, 0
        buckets = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


# Polls take from milliseconds to a request timeout; webhooks up to their 15 s timeout.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
# Lateness and notification: from milliseconds to the first retries of a webhook.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

POLLS = LoopCounter(
    "vtwatch_polls",
    "Upstream polls, by what they saw: pending, completed, error, or transient (no answer)",
    "outcome",
    ("pending", "completed", "error", "transient"),
)
POLL_DURATION = LoopHistogram(
    "vtwatch_poll_duration_seconds", "Time of one upstream request", buckets=REQUEST_BUCKETS
)
SCHEDULE_LAG = LoopHistogram(
    "vtwatch_schedule_lag_seconds",
    "How late a poll was claimed: claim time minus the time it was due",
    buckets=DELAY_BUCKETS,
)
WATCHES_REGISTERED = Counter("vtwatch_watches_registered", "Watches registered (new ones)")
WATCHES_FINISHED = Counter(
    "vtwatch_watches_finished", "Watches that reached a terminal state, by state", ["state"]
)
WEBHOOK_ATTEMPTS = Counter(
    "vtwatch_webhook_attempts",
    "Webhook delivery attempts, by outcome: delivered, retry, failed",
    ["outcome"],
)
WEBHOOK_DURATION = Histogram(
    "vtwatch_webhook_duration_seconds", "Time of one webhook POST", buckets=REQUEST_BUCKETS
)
NOTIFY_LATENCY = Histogram(
    "vtwatch_notify_latency_seconds",
    "From a watch's terminal state to its webhook's 2xx",
    buckets=DELAY_BUCKETS,
)
LEASES_LOST = Counter(
    "vtwatch_lease_lost", "Claimed items whose lease passed to another worker (work dropped)"
)
LEASES_ENDED = Counter(
    "vtwatch_leases_ended",
    "Claimed items whose watch ended while held, with no other worker involved (cancelled or "
    "deleted): their work dropped",
)
INFLIGHT_POLLS = Gauge("vtwatch_inflight_polls", "Polls claimed and not yet saved, this process")
# Read from Redis by the API every VTW_METRICS_REFRESH_SECONDS (`app.read_backlog`), not at scrape.
DUE_BACKLOG = Gauge(
    "vtwatch_due_backlog", "Watches due now and not claimed, fleet-wide (-1: unknown)"
)
OLDEST_DUE_AGE = Gauge(
    "vtwatch_oldest_due_age_seconds",
    "How long the oldest unclaimed due watch has waited, fleet-wide (0 when none; -1: unknown)",
)
HTTP_DURATION = Histogram(
    "vtwatch_http_request_duration_seconds",
    "API requests, by method, route template and status class (2xx, 4xx, 5xx)",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
POLLS_DEFERRED = Counter(
    "vtwatch_polls_deferred",
    "Polls put off without a request (no attempt spent), by reason: budget (the host's "
    "fleet-wide budget is used up), budget_unavailable (the budget could not be taken: a store "
    "error), breaker (its circuit breaker is open), host_share (a slow host holding half of "
    "this worker's slots)",
    ["reason"],
)
WEBHOOKS_DEFERRED = Counter(
    "vtwatch_webhooks_deferred",
    "Webhook deliveries put off without a POST (no attempt spent), by reason: budget (the "
    "receiver host's fleet-wide budget is used up), budget_unavailable (the budget could not be "
    "taken: a store error), host_share (a slow host holds half of this worker's slots)",
    ["reason"],
)
BREAKER_TRIPS = Counter(
    "vtwatch_breaker_trips", "Hosts' circuit breakers opened by polls that mostly failed"
)
HOST_BUDGET_CUTS = Counter(
    "vtwatch_host_budget_cuts", "Cuts of a host's fleet-wide budget after a 429 or 503"
)
REPLICA_WAIT = Histogram(
    "vtwatch_replica_wait_seconds",
    "Time a promised write (a registration, a delivered webhook) waited for replicas (WAIT)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REPLICA_WAIT_SHORT = Counter(
    "vtwatch_replica_wait_short",
    "Promised writes that fewer replicas than VTW_REDIS_WAIT_REPLICAS acknowledged in time",
)
PARTITIONS_OWNED = Gauge("vtwatch_partitions_owned", "Partitions this worker owns (rendezvous)")
CALLBACKS = Counter(
    "vtwatch_callbacks",
    "Push callbacks (POST or GET /v1/callbacks/...), by outcome: accepted (an early poll "
    "granted), ignored (a valid callback that changed nothing: within VTW_MIN_POLL_INTERVAL of "
    "the last early poll, or the watch already due), rejected (404: unknown watch, wrong token "
    "or ended watch)",
    ["outcome"],
)
