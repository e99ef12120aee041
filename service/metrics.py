"""Prometheus metrics of every process, in one place (prometheus-client's default registry).

Names follow Prometheus' rules: the `vtwatch_` prefix, base units (seconds), `_total` counters,
and no watch ids, tenants, URLs or hosts as labels (unbounded cardinality, and private).
The API serves them at `GET /metrics`; a worker on its own port (`VTW_METRICS_PORT`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Polls take from milliseconds to a request timeout; webhooks up to their 15 s timeout.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
# Lateness and notification: from milliseconds to the first retries of a webhook.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

POLLS = Counter(
    "vtwatch_polls",
    "Upstream polls, by what they saw: pending, completed, error, or transient (no answer)",
    ["outcome"],
)
POLL_DURATION = Histogram(
    "vtwatch_poll_duration_seconds", "Time of one upstream request", buckets=REQUEST_BUCKETS
)
SCHEDULE_LAG = Histogram(
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
INFLIGHT_POLLS = Gauge("vtwatch_inflight_polls", "Polls claimed and not yet saved, this process")
DUE_BACKLOG = Gauge("vtwatch_due_backlog", "Watches due now and not claimed (read at scrape)")
OLDEST_DUE_AGE = Gauge(
    "vtwatch_oldest_due_age_seconds",
    "How long the oldest unclaimed due watch has waited (read at scrape; 0 when none)",
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
    "error), breaker (its circuit breaker is open), host_share (it holds half of this worker's "
    "slots)",
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
