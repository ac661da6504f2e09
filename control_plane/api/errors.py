"""Error responses: one handler on ``GpufleetError`` maps neutral codes to HTTP statuses.

Pydantic validation errors, Starlette's 404/405 and unexpected exceptions are turned into
the same body: ``{"api_version":"v1","error":{"code","message","details"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from gpufleet.wire import ErrorBody, ErrorInfo
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from control_plane.errors import GpufleetError, InvalidRequest, RateLimited, Unavailable
from control_plane.services.dispatch import InferenceFailed

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "model_not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "request_timeout": 408,
    "rate_limited": 429,
    "unavailable": 503,
    "timeout": 504,
    "method_not_allowed": 405,
}
_CODE_BY_HTTP_STATUS = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}


class HttpError(GpufleetError):
    """A router-level error (unknown route, wrong method) carried into the one handler."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers or {}


def error_response(
    code: str,
    message: str,
    details: Any = None,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The error body for a code, with its status."""
    body = ErrorBody(error=ErrorInfo(code=code, message=message, details=details))
    return Response(
        body.model_dump_json(),
        status_code=status or STATUS_BY_CODE.get(code, 500),
        media_type="application/json",
        headers=headers,
    )


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """One entry per failing field: ``{"field": "inputs.0.shape", "message", "type"}``."""
    return [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "body",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def failure_status(exc: InferenceFailed) -> int:
    """HTTP status of a failed inference: cancelled 409, the caller's fault 400, else 500."""
    if exc.code == "cancelled":
        return 409
    return 400 if exc.client_fault else 500


async def on_gpufleet_error(request: Request, exc: Exception) -> Response:
    """The one mapping of domain error codes to HTTP statuses."""
    assert isinstance(exc, GpufleetError)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(max(1, int(exc.retry_after)))
    if isinstance(exc, HttpError):
        headers.update(exc.headers)
    status = (
        failure_status(exc)
        if isinstance(exc, InferenceFailed)
        else STATUS_BY_CODE.get(exc.code, 500)
    )
    if status >= 500:
        log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(exc.code, exc.message, exc.details, status, headers or None)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    details = validation_details(exc)
    return await on_gpufleet_error(request, InvalidRequest("invalid request", details=details))


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _CODE_BY_HTTP_STATUS.get(exc.status_code, "invalid_request")
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    if exc.status_code == 405:  # Starlette names the methods of one route; list them all
        exc.headers = {**(exc.headers or {}), "Allow": _allowed_methods(request)}
    if request.url.path.startswith("/v2"):  # KServe's error shape on every /v2 path
        from control_plane.api.limits import v2_error_response

        resp = v2_error_response(code, message)
        resp.headers.update(dict(exc.headers or {}))
        return resp
    err = HttpError(code, message, dict(exc.headers or {}))
    return await on_gpufleet_error(request, err)


def _allowed_methods(request: Request) -> str:
    """Every method served on this request's path template (one Starlette route per
    method: the one that answered 405 knows only its own). Of the templates that match,
    the most specific (fewest parameters: ``/v1/jobs/batch`` over ``/v1/jobs/{job_id}``)."""
    from starlette.routing import Match, Route

    matching = [
        r
        for r in getattr(request.app, "routes", [])
        if isinstance(r, Route) and r.methods and r.matches(request.scope)[0] != Match.NONE
    ]
    if not matching:
        return ""
    fewest = min(len(r.param_convertors) for r in matching)
    methods: set[str] = set()
    for r in matching:
        if len(r.param_convertors) == fewest:
            methods |= r.methods or set()
    return ", ".join(sorted(methods))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal", "internal error", status=500)


EXCEPTION_HANDLERS: dict[Any, Any] = {
    GpufleetError: on_gpufleet_error,
    ValidationError: on_validation_error,
    HTTPException: on_http_exception,
    Exception: on_unexpected,
}
