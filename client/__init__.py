"""Know when a video translation job on someone else's server finishes.

from client import VideoTranslationClient
final = await VideoTranslationClient("http://127.0.0.1:5000").get_status()
"""

import logging

from .backoff import BackoffPolicy
from .errors import ClientError, ConfigurationError
from .learned import DurationHistogram, LearnedSchedule, ScheduleHistory, upstream_key
from .polling import PollResult, StatusUpdate, VideoTranslationClient
from .service import (
    Event,
    HostStatus,
    ServiceAPIError,
    StatusSummary,
    Watch,
    WatchServiceClient,
)
from .upstream import (
    TERMINAL,
    Observation,
    Status,
    Upstream,
    UpstreamSpecError,
    classify_response,
    parse_retry_after,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "TERMINAL",
    "BackoffPolicy",
    "ClientError",
    "ConfigurationError",
    "DurationHistogram",
    "Event",
    "HostStatus",
    "LearnedSchedule",
    "Observation",
    "PollResult",
    "ScheduleHistory",
    "ServiceAPIError",
    "Status",
    "StatusSummary",
    "StatusUpdate",
    "Upstream",
    "UpstreamSpecError",
    "VideoTranslationClient",
    "Watch",
    "WatchServiceClient",
    "classify_response",
    "parse_retry_after",
    "upstream_key",
]
