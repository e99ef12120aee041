"""Every Redis key name of the service, in one place.

The scheduler's keys are split into P partitions (`VTW_PARTITIONS`, fixed for a deployment);
each partition's keys share one hash tag, so every script touches one Redis Cluster slot, and
the partitions spread over a cluster's masters. With P = 1 the tag is `{ns}` (the key names of
a single-partition deployment), else `{ns:p}` for partition p. A watch's partition is written
in its id (`domain.partition_of`); a registration with an Idempotency-Key goes to the partition
of (tenant, key), so its idempotency record and its document share a slot.

Per partition (`<tag>` = `{ns}` or `{ns:p}`):

    vtw:<tag>:schedule              ZSET  watch id -> due time (ms), or lease expiry while claimed
    vtw:<tag>:leases                HASH  claimed watch id -> fencing token (fixed at claim; the
                                          lease expiry in `schedule` is extended, the token never)
    vtw:<tag>:expiry                ZSET  terminal watch id -> when retention ends (ms)
    vtw:<tag>:outbox                ZSET  watch id -> when its webhook is due (ms), or lease expiry
    vtw:<tag>:outbox:leases         HASH  webhook being delivered -> fencing token
    vtw:<tag>:w:<id>                STRING the watch document (JSON, `service.store.codec`)
    vtw:<tag>:d:<id>                LIST  webhook delivery attempts (JSON), newest last
    vtw:<tag>:t:<tenant>:idx        ZSET  the tenant's watch ids (lexicographic, ids sort by time)
    vtw:<tag>:t:<tenant>:idx:<st>   ZSET  the same, per state
    vtw:<tag>:t:<tenant>:counts     HASH  state -> count, and wh:<state> -> count
    vtw:<tag>:idem:<tenant>:<hash>  STRING idempotency key -> "<id> <body fingerprint>"
    vtw:<tag>:cb:<id>               HASH  a watch's push callbacks: `h:<SHA-256 of a token>` -> 1
                                          per callback URL handed out, `early` -> when the last
                                          early poll was granted (ms); expires a day after the
                                          watch's deadline
    vtw:<tag>:callbacks             ZSET  "<id> <fencing token>" -> when an early poll is owed after
                                          the poll in flight under that lease ends (record.lua)
    vtw:<tag>:listening             STRING set (30 s, refreshed) while an API process streams a
                                          watch of the partition: only then is each saved poll
                                          published (a cluster would broadcast it to every node)

Global, under `{ns}`:

    vtw:{ns}:meta                  HASH  `partitions` -> P, written at first start; a process
                                         configured otherwise refuses to start
    vtw:{ns}:workers               ZSET  worker id -> its last heartbeat (Redis time, ms)
    vtw:{ns}:t:<tenant>:secret     HASH  webhook signing secrets: `current`, `old:<secret>` ->
                                         until when (ms) a rotated-out one still signs, `rotation`
                                         -> the request id of the last rotation
    vtw:{ns}:t:<tenant>:hosts      ZSET  upstream hosts the tenant's watches polled -> when
    vtw:{ns}:events:<id>           PUBSUB channel (not a key): a message per save of the watch
                                         (a poll's only while its partition is `listening`)
    vtw:{ns}:events:@<tenant>      PUBSUB channel: a watch id per registration, end or webhook
                                         attempt of the tenant's watches

Each upstream host, and each upstream (host and path template, `client.learned.upstream_key`),
has keys under a tag of its own (its state is fleet-wide, read and written by its own scripts,
one per call), so busy ones spread over the slots:

    vtw:{ns/h/<digest>}:host           HASH  the host's request budget (a token bucket) and
                                             its fair-share clock (`hosts.py`)
    vtw:{ns/h/<digest>}:fair           ZSET  tenant -> its fair-share tag on the budget
    vtw:{ns/h/<digest>}:backlog        ZSET  tenant -> when the budget last refused it
    vtw:{ns/h/<digest>}:breaker:<port> HASH  the fleet's circuit breaker of one port of the host
    vtw:{ns/h/<digest>}:breaker:<port>:t:<tenant>
                                       HASH  one tenant's circuit breaker of that port
    vtw:{ns/r/<digest>}:host|fair|backlog    the same budget for a webhook receiver's host
    vtw:{ns/u/<digest>}:durations      HASH  one upstream's learned job durations: bin -> weight
                                             x scale, `scale`, `upstream` (`durations.py`)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..domain import MAX_PARTITIONS, partition_of

HostKind = Literal["h", "r"]  # an upstream host, a webhook receiver host

NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
QueueKind = Literal["schedule", "outbox"]


@dataclass(frozen=True, slots=True)
class Partition:
    """The keys of one partition (one hash tag)."""

    number: int
    prefix: str

    @property
    def schedule(self) -> str:
        return self.prefix + "schedule"

    @property
    def leases(self) -> str:
        return self.prefix + "leases"

    @property
    def expiry(self) -> str:
        return self.prefix + "expiry"

    @property
    def outbox(self) -> str:
        return self.prefix + "outbox"

    @property
    def outbox_leases(self) -> str:
        return self.prefix + "outbox:leases"

    @property
    def listening(self) -> str:
        return self.prefix + "listening"

    @property
    def callbacks(self) -> str:
        return self.prefix + "callbacks"

    def callback(self, watch_id: str) -> str:
        return f"{self.prefix}cb:{watch_id}"

    def queue(self, kind: QueueKind) -> tuple[str, str]:
        """The leased schedule `kind` of this partition: (its ZSET, its leases)."""
        if kind == "schedule":
            return self.schedule, self.leases
        return self.outbox, self.outbox_leases

    def watch(self, watch_id: str) -> str:
        return f"{self.prefix}w:{watch_id}"

    def deliveries(self, watch_id: str) -> str:
        return f"{self.prefix}d:{watch_id}"

    def index(self, tenant: str, state: str | None = None) -> str:
        base = f"{self.prefix}t:{tenant}:idx"
        return base if state is None else f"{base}:{state}"

    def counts(self, tenant: str) -> str:
        return f"{self.prefix}t:{tenant}:counts"

    def idempotency(self, tenant: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{tenant}:{digest}"


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = "vtw"
    partitions: int = 1
    prefix: str = field(init=False)
    parts: tuple[Partition, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not NAMESPACE_PATTERN.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} must match {NAMESPACE_PATTERN.pattern}")
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, not {self.partitions}")
        prefix = f"vtw:{{{self.namespace}}}:"
        object.__setattr__(self, "prefix", prefix)
        parts = (
            (Partition(0, prefix),)
            if self.partitions == 1
            else tuple(
                Partition(p, f"vtw:{{{self.namespace}:{p}}}:") for p in range(self.partitions)
            )
        )
        object.__setattr__(self, "parts", parts)

    def of(self, watch_id: str) -> Partition:
        """The partition of a watch, read from its id."""
        return self.parts[partition_of(watch_id, self.partitions)]

    def group(self, watch_ids: Iterable[str]) -> dict[Partition, list[int]]:
        """The positions of `watch_ids` by partition, partitions in order of first appearance:
        for a call per partition of a batch, each in one slot."""
        by_number: dict[int, list[int]] = {}
        for index, watch_id in enumerate(watch_ids):
            by_number.setdefault(partition_of(watch_id, self.partitions), []).append(index)
        return {self.parts[number]: indexes for number, indexes in by_number.items()}

    def of_idempotency(self, tenant: str, key: str) -> Partition:
        """The partition of a registration with an Idempotency-Key (every retry lands there)."""
        digest = hashlib.sha256(f"{tenant}\0{key}".encode()).digest()
        return self.parts[int.from_bytes(digest[:4], "big") % self.partitions]

    def watch(self, watch_id: str) -> str:
        return self.of(watch_id).watch(watch_id)

    def deliveries(self, watch_id: str) -> str:
        return self.of(watch_id).deliveries(watch_id)

    @property
    def meta(self) -> str:
        return self.prefix + "meta"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def events_prefix(self) -> str:
        return self.prefix + "events:"

    def tenant_prefix(self, tenant: str) -> str:
        return f"{self.prefix}t:{tenant}:"

    def secret(self, tenant: str) -> str:
        return self.tenant_prefix(tenant) + "secret"

    def tenant_hosts(self, tenant: str) -> str:
        return self.tenant_prefix(tenant) + "hosts"

    def host(self, host: str, kind: HostKind = "h") -> str:
        """The budget of one normalised host (`h`: an upstream; `r`: a webhook receiver),
        under a hash tag of its own."""
        return self._host_tag(host, kind) + "host"

    def fair(self, host: str, kind: HostKind = "h") -> str:
        """The tenants' fair-share tags on a host's budget (same tag as the budget)."""
        return self._host_tag(host, kind) + "fair"

    def backlog(self, host: str, kind: HostKind = "h") -> str:
        """The tenants a host's budget refused lately (same tag as the budget)."""
        return self._host_tag(host, kind) + "backlog"

    def breaker(self, host: str, port: int, tenant: str | None = None) -> str:
        """The circuit breaker of one port of an upstream host, the fleet's or one tenant's:
        in its budget's hash slot (same tag)."""
        fleet = f"{self._host_tag(host, 'h')}breaker:{port}"
        return fleet if tenant is None else f"{fleet}:t:{tenant}"

    def _host_tag(self, host: str, kind: HostKind) -> str:
        digest = hashlib.sha256(host.encode()).hexdigest()[:20]
        return f"vtw:{{{self.namespace}/{kind}/{digest}}}:"

    def durations(self, upstream: str) -> str:
        """The learned job durations of one upstream (`upstream_key`), under a tag of its own."""
        digest = hashlib.sha256(upstream.encode()).hexdigest()[:20]
        return f"vtw:{{{self.namespace}/u/{digest}}}:durations"
