"""Payload route: a presigned upload for a large input tensor (api-v1 "Jobs").

``POST /v1/payloads {"size": N}`` answers ``{"ref","url","method":"PUT","headers"}``; the
client PUTs the tensor's raw bytes to ``url`` (the bucket, not the control plane) and
submits the job with ``"data_ref": ref`` in that tensor instead of ``data``.
"""

from __future__ import annotations

from gpufleet.wire import PayloadUpload, PayloadUploadRequest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.context import services
from control_plane.api.http import read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.payloads import PayloadService

__all__ = ["ROUTES", "payload_service"]


def payload_service(request: Request) -> PayloadService:
    """The payload service of the job service serving ``request``."""
    svc = getattr(services(request).jobs, "payloads", None)
    if not isinstance(svc, PayloadService):
        raise Unavailable("payload uploads are not configured on this control plane")
    return svc


async def create_payload(request: Request) -> Response:
    p = principal(request)
    req = await read_model(request, PayloadUploadRequest)
    return send(await run_in_threadpool(payload_service(request).create, p, req), 201)


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/payloads",
        create_payload,
        "Presigned PUT for a large input tensor's raw bytes; refer to it with data_ref",
        PayloadUpload,
        status=201,
        request=PayloadUploadRequest,
    ),
]
