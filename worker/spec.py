"""A watch's immutable spec (the registration), parsed once per distinct spec."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from client.backoff import BackoffPolicy


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a poll needs of a watch's immutable spec, parsed once per distinct spec."""

    status_url: str
    host: str
    webhook_url: str | None
    backoff: BackoffPolicy
    max_attempts: int | None


@functools.lru_cache(maxsize=65536)
def parse_spec(spec_json: str) -> WatchSpec:
    spec = json.loads(spec_json)
    policy = spec["policy"]
    backoff = BackoffPolicy(
        initial_wait_time=policy["initial_wait_time"],
        backoff_factor=policy["backoff_factor"],
        jitter=policy["jitter"],
        max_interval=policy["max_interval"],
    )
    url = spec["status_url"]
    return WatchSpec(
        url, urlsplit(url).netloc, spec.get("webhook_url"), backoff, policy["max_attempts"]
    )
