"""Domain errors of the control plane.

They carry a neutral ``code`` (api-v1 error codes), never an HTTP status; the API layer maps
code -> status in one exception handler.

    GpufleetError
    ├── InvalidRequest        invalid_request    (field named in ``details``)
    ├── Unauthorized          unauthorized
    ├── Forbidden             forbidden
    ├── NotFound              not_found          (ModelNotFound: model_not_found)
    ├── Conflict              conflict           (StaleLease: stale lease token)
    ├── PayloadTooLarge       payload_too_large
    ├── SlowRequest           request_timeout    (a body slower than the listener allows)
    ├── RateLimited           rate_limited       (``retry_after`` seconds)
    ├── Unavailable           unavailable        (storage unreachable)
    └── Timeout               timeout
"""

from __future__ import annotations

from typing import Any


class GpufleetError(Exception):
    code = "internal"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(GpufleetError):
    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None, details: Any = None) -> None:
        if details is None and field is not None:
            details = [{"field": field, "message": message}]
        super().__init__(message, details)
        self.field = field


class Unauthorized(GpufleetError):
    code = "unauthorized"


class Forbidden(GpufleetError):
    code = "forbidden"


class NotFound(GpufleetError):
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GpufleetError):
    code = "conflict"


class StaleLease(Conflict):
    """The lease token is not the job's current one (expired and re-leased, or cancelled)."""


class PayloadTooLarge(GpufleetError):
    code = "payload_too_large"


class SlowRequest(GpufleetError):
    """The request body arrived slower than the listener allows (``http_server``)."""

    code = "request_timeout"

    @classmethod
    def message_for(cls, idle_s: float, min_rate: int) -> str:
        """The message of the listener's slow-body limits."""
        return (
            f"the request body arrived too slowly (each chunk within {idle_s:g} s, then at "
            f"least {min_rate} bytes/s)"
        )


class RateLimited(GpufleetError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int = 1, details: Any = None) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class Unavailable(GpufleetError):
    """Storage (or another dependency) cannot answer now; answered 503 with ``Retry-After``."""

    code = "unavailable"

    def __init__(self, message: str, details: Any = None, retry_after: int = 1) -> None:
        super().__init__(message, details)
        self.retry_after = retry_after


class Timeout(GpufleetError):
    code = "timeout"
