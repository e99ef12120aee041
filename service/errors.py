"""Errors of the watch service.

ServiceError
 ├── WatchNotFound          no such watch for this tenant (another tenant's is "not found" too)
 ├── WatchConflict          the watch is not in a state that allows the change
 ├── IdempotencyConflict    an Idempotency-Key reused with another body
 └── StoreUnavailable       Redis cannot be reached; the request may be retried
"""


class ServiceError(Exception):
    """Base class of the service's errors."""


class WatchNotFound(ServiceError):
    def __init__(self, watch_id: str) -> None:
        super().__init__(f"watch {watch_id!r} not found")
        self.watch_id = watch_id


class WatchConflict(ServiceError):
    def __init__(self, watch_id: str, why: str) -> None:
        super().__init__(f"watch {watch_id!r} {why}")
        self.watch_id = watch_id


class IdempotencyConflict(ServiceError):
    def __init__(self, watch_id: str) -> None:
        super().__init__(
            "this Idempotency-Key was used with a different request body "
            f"(it created watch {watch_id!r})"
        )
        self.watch_id = watch_id


class StoreUnavailable(ServiceError):
    """Redis could not be reached."""
