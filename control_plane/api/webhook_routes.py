"""Webhook routes: the tenant's signing secret, its rotation, and a job's delivery log.

The handlers find the ``WebhookService`` as ``app.state.webhooks`` or, when the composition
root keeps it there, as ``Services.webhooks``.
"""

from __future__ import annotations

from gpufleet.wire import WebhookDeliveryList, WebhookSecret
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.context import services
from control_plane.api.http import send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.webhooks import WebhookService

__all__ = ["ROUTES", "routes", "webhook_service"]


def webhook_service(request: Request) -> WebhookService:
    """The webhook service of the app serving ``request``."""
    svc = getattr(request.app.state, "webhooks", None)
    if svc is None:
        svc = getattr(services(request), "webhooks", None)
    if not isinstance(svc, WebhookService):
        raise Unavailable("webhooks are not configured on this control plane")
    return svc


async def get_secret(request: Request) -> Response:
    p = principal(request)
    return send(await run_in_threadpool(webhook_service(request).secret, p))


async def rotate_secret(request: Request) -> Response:
    p = principal(request)
    return send(await run_in_threadpool(webhook_service(request).rotate_secret, p))


async def job_deliveries(request: Request) -> Response:
    p = principal(request)
    job_id = request.path_params["job_id"]
    return send(await run_in_threadpool(webhook_service(request).delivery_log, p, job_id))


ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v1/webhooks/secret",
        get_secret,
        "The caller's tenant's webhook signing secret (created on first use)",
        WebhookSecret,
    ),
    route(
        "POST",
        "/v1/webhooks/secret/rotate",
        rotate_secret,
        "Rotate the signing secret; the old one keeps signing for the grace period",
        WebhookSecret,
    ),
    route(
        "GET",
        "/v1/jobs/{job_id}/webhooks",
        job_deliveries,
        "The job's webhook delivery log (every attempt)",
        WebhookDeliveryList,
    ),
]
routes = ROUTES
