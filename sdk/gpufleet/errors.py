"""Errors raised by the gpufleet SDK.

One base class; one subclass per api-v1 error code, so callers catch what they mean::

    GpufleetError
    ├── APIError                      an error response from the control plane
    │   ├── InvalidRequestError       invalid_request (422); ``.field`` names the bad field
    │   │   └── ValidationError       (alias kept for readability: ``except ValidationError``)
    │   ├── AuthError                 unauthorized (401)
    │   ├── ForbiddenError            forbidden (403)
    │   ├── NotFoundError             not_found (404)
    │   │   └── ModelNotFoundError    model_not_found (404)
    │   ├── ConflictError             conflict (409)
    │   ├── PayloadTooLargeError      payload_too_large (413)
    │   ├── RateLimitedError          rate_limited (429); ``.retry_after`` seconds
    │   ├── UnavailableError          unavailable (503)
    │   ├── GatewayTimeoutError       timeout (504)
    │   └── ServerError               any other status >= 500 (``internal``)
    ├── ConnectionError               the control plane or the bucket could not be reached
    ├── JobFailedError                a job ended FAILED, TIMED_OUT or CANCELLED (``.job``)
    ├── WaitTimeoutError              ``wait()`` gave up before the job finished
    └── WebhookVerificationError      a webhook delivery's signature did not verify

Every ``APIError`` keeps ``.response`` (the ``httpx.Response``), ``.status_code``,
``.code``, ``.message`` and ``.details`` of the error body.
"""

from __future__ import annotations

import builtins
import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from gpufleet.wire import JobView

__all__ = [
    "APIError",
    "AuthError",
    "ConflictError",
    "ConnectionError",
    "ForbiddenError",
    "GatewayTimeoutError",
    "GpufleetError",
    "InvalidRequestError",
    "JobFailedError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "ServerError",
    "UnavailableError",
    "ValidationError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "error_from_response",
    "mark_submit_error",
]


class GpufleetError(Exception):
    """Base of every error the SDK raises.

    Errors of a submit (``submit``, ``submit_batch``) also say whether the request may
    have been stored anyway: ``.idempotency_key`` is the Idempotency-Key the request carried
    and ``.may_exist`` is True unless the server certainly refused it (a 4xx answer). When it
    is True, submit again with ``idempotency_key=err.idempotency_key``: the same job(s) come
    back, never a second copy. Other errors have ``None`` and False.
    """

    idempotency_key: str | None = None
    may_exist: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def _with_hint(self, text: str) -> str:
        if not self.may_exist or self.idempotency_key is None:
            return text
        return (
            f"{text} (the request may have been stored: submit again with "
            f"idempotency_key={self.idempotency_key!r} to get the same job, never a second)"
        )

    def __str__(self) -> str:
        return self._with_hint(super().__str__())


class APIError(GpufleetError):
    """The control plane answered with an error body."""

    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        response: httpx.Response | None = None,
        code: str | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.response = response
        self.status_code: int | None = response.status_code if response is not None else None
        if code is not None:
            self.code = code
        self.details = details

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code is not None else ""
        return self._with_hint(f"{status}{self.code}: {self.message}")


class InvalidRequestError(APIError):
    """422 ``invalid_request``: the request failed validation. ``.field`` is the first bad
    field named in the details (``"inputs.0.shape"``), or ``None``."""

    code = "invalid_request"

    @property
    def field(self) -> str | None:
        details = self.details
        if isinstance(details, list):
            for item in details:
                if isinstance(item, dict) and isinstance(item.get("field"), str):
                    return str(item["field"])
        if isinstance(details, dict) and isinstance(details.get("field"), str):
            return str(details["field"])
        return None


class ValidationError(InvalidRequestError):
    """Raised for 422 responses (a subclass, so either name catches it)."""


class AuthError(APIError):
    """401 ``unauthorized``: missing, expired or revoked credentials."""

    code = "unauthorized"


class ForbiddenError(APIError):
    """403 ``forbidden``: the caller's role may not do this."""

    code = "forbidden"


class NotFoundError(APIError):
    """404 ``not_found`` (another tenant's objects are reported as not found too)."""

    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """404 ``model_not_found``: the model has no READY version."""

    code = "model_not_found"


class ConflictError(APIError):
    """409 ``conflict``: e.g. cancelling a finished job, an idempotency key reused with
    another body, or a version that already exists."""

    code = "conflict"


class PayloadTooLargeError(APIError):
    """413 ``payload_too_large``."""

    code = "payload_too_large"


class RateLimitedError(APIError):
    """429 ``rate_limited``; ``.retry_after`` is the server's ``Retry-After`` in seconds;
    ``.quota`` names the tenant quota hit (``max_queued``, ``submit_rate``), None when the
    refusal was not a quota (a full model queue, busy runners)."""

    code = "rate_limited"

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.response)

    @property
    def quota(self) -> str | None:
        details = self.details if isinstance(self.details, dict) else {}
        quota = details.get("quota")
        return quota if isinstance(quota, str) else None

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (quota {self.quota})" if self.quota and self.quota not in text else text


class UnavailableError(APIError):
    """503 ``unavailable``: the control plane or its storage is unavailable."""

    code = "unavailable"


class GatewayTimeoutError(APIError):
    """504 ``timeout``: the server gave up waiting (e.g. synchronous inference)."""

    code = "timeout"


class ServerError(APIError):
    """Any other error response (usually 500 ``internal``)."""


class ConnectionError(GpufleetError, builtins.ConnectionError):
    """The server could not be reached (after retries). ``__cause__`` is the httpx error."""


class JobFailedError(GpufleetError):
    """A job ended without outputs. ``.job`` is the final job; ``.error`` its error info."""

    def __init__(self, job: JobView) -> None:
        err = job.error
        detail = f"{err.code}: {err.message}" if err is not None else "no error reported"
        super().__init__(f"job {job.id} ended {job.status} ({detail})")
        self.job = job
        self.status = job.status
        self.error = err


class WaitTimeoutError(GpufleetError, builtins.TimeoutError):
    """``wait()`` reached its timeout while the job was still running. ``.job`` is the
    last state seen."""

    def __init__(self, job: JobView, timeout: float) -> None:
        why = f" ({job.waiting_reason})" if job.waiting_reason else ""
        super().__init__(
            f"job {job.id} still {job.status} after {timeout:g}s{why}; it goes on "
            "(wait again, or cancel it)"
        )
        self.job = job


class WebhookVerificationError(GpufleetError):
    """A webhook delivery failed verification (bad signature, stale timestamp, headers)."""


_BY_CODE: dict[str, type[APIError]] = {
    "invalid_request": ValidationError,
    "unauthorized": AuthError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "model_not_found": ModelNotFoundError,
    "conflict": ConflictError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
    "timeout": GatewayTimeoutError,
}
_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitedError,
    503: UnavailableError,
    504: GatewayTimeoutError,
}


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds form only), or ``None``."""
    if response is None:
        return None
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def error_from_response(response: httpx.Response) -> APIError:
    """The typed error for an error response; the code in the body wins over the status."""
    code: str | None = None
    message = response.reason_phrase or f"HTTP {response.status_code}"
    details: Any = None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = str(err.get("message") or message)
        details = err.get("details")
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(response.status_code) or ServerError
    return cls(message, response=response, code=code, details=details)


def mark_submit_error(exc: GpufleetError, key: str) -> GpufleetError:
    """Record on a submit's error the key it carried and whether the job may exist: a 4xx
    answer refused the request; anything else (5xx, no answer) may have come after it was
    stored."""
    exc.idempotency_key = key
    status = exc.status_code if isinstance(exc, APIError) else None
    exc.may_exist = isinstance(exc, ConnectionError) or (
        isinstance(exc, APIError) and (status is None or status >= 500)
    )
    return exc
