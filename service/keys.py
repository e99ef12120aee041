"""Every Redis key name of the service, in one place.

All keys but the hosts' and the upstreams' share the hash tag `{namespace}`, so every script's
keys live in one Redis Cluster slot. Each upstream host, and each upstream (host and path
template, `client.learned.upstream_key`), has keys under a tag of its own (its state is
fleet-wide, read and written by its own scripts, one per call), so busy ones spread over the
slots:

    vtw:{ns/h/<digest>}:host           HASH  the host's request budget (a token bucket)
    vtw:{ns/h/<digest>}:breaker:<port> HASH  the circuit breaker of one port of the host
    vtw:{ns/u/<digest>}:durations      HASH  one upstream's learned job durations: bin -> weight
                                             x scale, `scale`, `upstream` (`durations.py`)

    vtw:{ns}:schedule              ZSET  watch id -> due time (ms), or lease expiry while claimed
    vtw:{ns}:leases                HASH  claimed watch id -> fencing token (fixed at claim; the
                                         lease expiry in `schedule` is extended, the token never)
    vtw:{ns}:expiry                ZSET  terminal watch id -> when retention ends (ms)
    vtw:{ns}:outbox                ZSET  watch id -> when its webhook is due (ms), or lease expiry
    vtw:{ns}:outbox:leases         HASH  webhook being delivered -> fencing token
    vtw:{ns}:w:<id>                STRING the watch document (JSON)
    vtw:{ns}:d:<id>                LIST  webhook delivery attempts (JSON), newest last
    vtw:{ns}:t:<tenant>:idx        ZSET  the tenant's watch ids (lexicographic, ids sort by time)
    vtw:{ns}:t:<tenant>:idx:<st>   ZSET  the same, per state
    vtw:{ns}:t:<tenant>:counts     HASH  state -> count, and wh:<state> -> count
    vtw:{ns}:t:<tenant>:secret     HASH  webhook signing secrets: `current`, `old:<secret>` ->
                                         until when (ms) a rotated-out one still signs, `rotation`
                                         -> the request id of the last rotation
    vtw:{ns}:idem:<tenant>:<hash>  STRING idempotency key -> "<id> <body fingerprint>"
    vtw:{ns}:events:<id>           PUBSUB channel (not a key): a message per save of the watch
    vtw:{ns}:events:@<tenant>      PUBSUB channel: a watch id per registration, end or webhook
                                         attempt of the tenant's watches
    vtw:{ns}:t:<tenant>:hosts      ZSET  hosts the tenant's watches polled -> when (ms)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = "vtw"
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        if not NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} must match {NAMESPACE_PATTERN.pattern}")
        object.__setattr__(self, "prefix", f"vtw:{{{self.namespace}}}:")

    @property
    def schedule(self) -> str:
        return self.prefix + "schedule"

    @property
    def leases(self) -> str:
        return self.prefix + "leases"

    @property
    def outbox_leases(self) -> str:
        return self.prefix + "outbox:leases"

    @property
    def expiry(self) -> str:
        return self.prefix + "expiry"

    @property
    def outbox(self) -> str:
        return self.prefix + "outbox"

    @property
    def events_prefix(self) -> str:
        return self.prefix + "events:"

    @property
    def watch_prefix(self) -> str:
        return self.prefix + "w:"

    def watch(self, watch_id: str) -> str:
        return self.watch_prefix + watch_id

    @property
    def deliveries_prefix(self) -> str:
        return self.prefix + "d:"

    def deliveries(self, watch_id: str) -> str:
        return self.deliveries_prefix + watch_id

    def tenant_prefix(self, tenant: str) -> str:
        return f"{self.prefix}t:{tenant}:"

    def index(self, tenant: str, state: str | None = None) -> str:
        base = self.tenant_prefix(tenant) + "idx"
        return base if state is None else f"{base}:{state}"

    def counts(self, tenant: str) -> str:
        return self.tenant_prefix(tenant) + "counts"

    def secret(self, tenant: str) -> str:
        return self.tenant_prefix(tenant) + "secret"

    def tenant_hosts(self, tenant: str) -> str:
        return self.tenant_prefix(tenant) + "hosts"

    def host(self, host: str) -> str:
        """The budget of one normalised upstream host, under a hash tag of its own."""
        return self._host_tag(host) + "host"

    def breaker(self, host: str, port: int) -> str:
        """The circuit breaker of one port of a host: in its budget's hash slot (same tag)."""
        return f"{self._host_tag(host)}breaker:{port}"

    def _host_tag(self, host: str) -> str:
        digest = hashlib.sha256(host.encode()).hexdigest()[:20]
        return f"vtw:{{{self.namespace}/h/{digest}}}:"

    def durations(self, upstream: str) -> str:
        """The learned job durations of one upstream (`upstream_key`), under a tag of its own."""
        digest = hashlib.sha256(upstream.encode()).hexdigest()[:20]
        return f"vtw:{{{self.namespace}/u/{digest}}}:durations"

    def idempotency(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{tenant}:{digest}"
