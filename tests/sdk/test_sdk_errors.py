"""Each api-v1 error code (and bare status) maps to its SDK exception."""

from __future__ import annotations

import httpx
import pytest
from gpufleet import errors


def _response(
    status: int, code: str | None, headers: dict[str, str] | None = None, **kw: object
) -> httpx.Response:
    body = {"api_version": "v1", "error": {"code": code, "message": f"m-{code}", **kw}}
    request = httpx.Request("GET", "http://cp.test/v1/x")
    if code is None:
        return httpx.Response(status, text="<html>proxy</html>", request=request, headers=headers)
    return httpx.Response(status, json=body, request=request, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (422, "invalid_request", errors.ValidationError),
        (401, "unauthorized", errors.AuthError),
        (403, "forbidden", errors.ForbiddenError),
        (404, "not_found", errors.NotFoundError),
        (404, "model_not_found", errors.ModelNotFoundError),
        (409, "conflict", errors.ConflictError),
        (413, "payload_too_large", errors.PayloadTooLargeError),
        (429, "rate_limited", errors.RateLimitedError),
        (503, "unavailable", errors.UnavailableError),
        (504, "timeout", errors.GatewayTimeoutError),
        (500, "internal", errors.ServerError),
        # no error body (a proxy answered): the status decides
        (401, None, errors.AuthError),
        (404, None, errors.NotFoundError),
        (502, None, errors.ServerError),
        (503, None, errors.UnavailableError),
    ],
)
def test_code_maps_to_class(status: int, code: str | None, cls: type[errors.APIError]) -> None:
    resp = _response(status, code)
    err = errors.error_from_response(resp)
    assert type(err) is cls
    assert isinstance(err, errors.GpufleetError)
    assert err.response is resp
    assert err.status_code == status
    if code is not None:
        assert err.code == code
        assert err.message == f"m-{code}"
        assert str(status) in str(err) and code in str(err)


def test_validation_error_names_the_field_and_keeps_details() -> None:
    details = [{"field": "inputs.0.shape", "message": "bad", "type": "x"}]
    err = errors.error_from_response(_response(422, "invalid_request", details=details))
    assert isinstance(err, errors.InvalidRequestError)
    assert err.field == "inputs.0.shape"
    assert err.details == details


def test_rate_limited_carries_retry_after() -> None:
    err = errors.error_from_response(_response(429, "rate_limited", headers={"Retry-After": "7"}))
    assert isinstance(err, errors.RateLimitedError)
    assert err.retry_after == 7.0
    assert errors.error_from_response(_response(429, "rate_limited")).retry_after is None  # type: ignore[attr-defined]


def test_model_not_found_is_a_not_found() -> None:
    err = errors.error_from_response(_response(404, "model_not_found"))
    with pytest.raises(errors.NotFoundError):
        raise err


def test_builtin_compatible_bases() -> None:
    assert issubclass(errors.ConnectionError, ConnectionError)
    assert issubclass(errors.WaitTimeoutError, TimeoutError)
