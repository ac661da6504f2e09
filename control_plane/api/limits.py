"""Request body limit (applied by the API's middleware layer, ``gate.ApiGate``), never
buffering more than the limit.

A ``Content-Length`` above the limit is answered 413 at once (:func:`refusal`); otherwise the
bytes are counted as they stream and the read that crosses the limit raises
``PayloadTooLarge`` inside the handler, which the error handler turns into 413.
"""

from __future__ import annotations

from starlette.responses import Response

from control_plane.api.errors import STATUS_BY_CODE, error_response


def v2_error_response(code: str, message: str) -> Response:
    """The /v2 error body (``kserve_wire.V2Error``) for a refusal made before routing."""
    from control_plane.api.kserve_wire import V2Error

    body = V2Error(error=message, code=code).model_dump_json()
    return Response(body, STATUS_BY_CODE[code], media_type="application/json")


def refusal(path: str, declared: int, max_bytes: int) -> Response:
    """The answer to a request whose ``Content-Length`` is over ``max_bytes`` (413) or bad
    (``declared`` < 0: 422), in the error shape of its path."""
    code = "payload_too_large" if declared > 0 else "invalid_request"
    message = f"request body over {max_bytes} bytes" if declared > 0 else "bad Content-Length"
    if path.startswith("/v2"):  # KServe's error shape
        return v2_error_response(code, message)
    return error_response(code, message)
