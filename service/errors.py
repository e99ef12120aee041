"""Errors of the watch service.

ServiceError
 ├── WatchNotFound          no such watch for this tenant (another tenant's is "not found" too)
 ├── WatchConflict          the watch is not in a state that allows the change
 ├── IdempotencyConflict    an Idempotency-Key reused with another body
 ├── IdempotencyKeyExpired  an Idempotency-Key whose watch has ended and been deleted
 ├── TooManyWatches         the tenant has VTW_MAX_ACTIVE_WATCHES pending watches already
 └── PartitionsMismatch     VTW_PARTITIONS differs from what the store was created with (the
                            process refuses to start)

Each carries the HTTP status the API answers it with (`status_code`). Redis being unavailable is
none of them: the API answers any `RedisError` with `503` (`service/api/app.py`).
"""


class ServiceError(Exception):
    """Base class of the service's errors."""

    status_code = 400


class WatchNotFound(ServiceError):
    status_code = 404

    def __init__(self, watch_id: str) -> None:
        super().__init__(f"watch {watch_id!r} not found")
        self.watch_id = watch_id


class WatchConflict(ServiceError):
    status_code = 409

    def __init__(self, watch_id: str, why: str) -> None:
        super().__init__(f"watch {watch_id!r} {why}")
        self.watch_id = watch_id


class IdempotencyConflict(ServiceError):
    status_code = 409

    def __init__(self, watch_id: str) -> None:
        super().__init__(
            "this Idempotency-Key was used with a different request body "
            f"(it created watch {watch_id!r})"
        )
        self.watch_id = watch_id


class IdempotencyKeyExpired(ServiceError):
    status_code = 409

    def __init__(self, watch_id: str) -> None:
        super().__init__(
            f"this Idempotency-Key created watch {watch_id!r}, which has ended and been deleted "
            "after its retention period; use a new key to register again"
        )
        self.watch_id = watch_id


class TooManyWatches(ServiceError):
    status_code = 429

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(
            f"this tenant has {pending} pending watches, the most allowed is {limit} "
            "(VTW_MAX_ACTIVE_WATCHES): wait for some to end, or cancel some"
        )


class PartitionsMismatch(ServiceError):
    status_code = 500

    def __init__(self, configured: int, stored: int, namespace: str) -> None:
        super().__init__(
            f"VTW_PARTITIONS is {configured} but the store of namespace {namespace!r} was created "
            f"with {stored} partitions: set VTW_PARTITIONS={stored}. Changing it is not "
            "supported: it needs an empty store (drain every watch first) or a migration"
        )
        self.configured, self.stored = configured, stored
