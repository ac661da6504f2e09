"""Direct mode and signing-key routes: tickets for a runner's own KServe endpoint, the admin
view and rotation of the asymmetric signing keys (docs/direct.md)."""

from __future__ import annotations

from gpufleet.wire import DirectRequest, DirectTicket, SigningKeyList
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import Services, services
from control_plane.api.http import parse_body, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.direct import DirectService
from control_plane.services.signing_keys import SigningKeys, key_views, rotate_now


def _keys(svc: Services) -> SigningKeys:
    if svc.signing_keys is None:
        raise Unavailable("this control plane has no signing keys configured")
    return svc.signing_keys


def _direct(svc: Services) -> DirectService:
    if svc.direct is None:
        raise Unavailable("direct mode is not available on this control plane")
    return svc.direct


async def direct_ticket(request: Request) -> HttpResponse:
    p = principal(request)
    body = await request.body()
    req = parse_body(body, DirectRequest) if body.strip() else DirectRequest()
    direct = _direct(services(request))
    name = request.path_params["name"]
    return send(await run_in_threadpool(direct.ticket, p, name, req))


async def list_signing_keys(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(key_views, _keys(services(request)), p))


async def rotate_signing_key(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(rotate_now, _keys(services(request)), p))


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/models/{name}/direct",
        direct_ticket,
        "A ticket to call a runner serving the model directly (direct mode)",
        DirectTicket,
        request=DirectRequest,
        scope="jobs:write",  # a ticket is a way to infer, like POST /v1/models/{m}/infer
    ),
    route(
        "GET",
        "/v1/admin/signing-keys",
        list_signing_keys,
        "Signing keys that verify now (admin)",
        SigningKeyList,
    ),
    route(
        "POST",
        "/v1/admin/signing-keys/rotate",
        rotate_signing_key,
        "Rotate the signing key now (admin); the old one verifies for the overlap window",
        SigningKeyList,
    ),
]
