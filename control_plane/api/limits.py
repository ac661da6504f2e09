"""Request body limit: pure ASGI middleware, never buffers more than the limit.

A ``Content-Length`` above the limit is answered 413 at once; otherwise the bytes are counted
as they stream and the read that crosses the limit raises ``PayloadTooLarge`` inside the
handler, which the error handler turns into 413.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.api.errors import STATUS_BY_CODE, error_response
from control_plane.errors import PayloadTooLarge


def v2_error_response(code: str, message: str) -> Response:
    """The /v2 error body (``kserve_wire.V2Error``) for a refusal made before routing."""
    from control_plane.api.kserve_wire import V2Error

    body = V2Error(error=message, code=code).model_dump_json()
    return Response(body, STATUS_BY_CODE[code], media_type="application/json")


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with 413. Paths under ``exempt``
    (the embedded store's blob URLs, which stream to disk under their own limit) pass."""

    def __init__(self, app: ASGIApp, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.exempt and str(scope.get("path", "")).startswith(self.exempt)
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    code = "payload_too_large" if declared > 0 else "invalid_request"
                    message = (
                        f"request body over {self.max_bytes} bytes"
                        if declared > 0
                        else "bad Content-Length"
                    )
                    if str(scope.get("path", "")).startswith("/v2"):  # KServe's error shape
                        resp = v2_error_response(code, message)
                    else:
                        resp = error_response(code, message)
                    await resp(scope, receive, send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"request body over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)
