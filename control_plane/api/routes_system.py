"""Health, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import hmac

from gpufleet._version import __version__
from gpufleet.wire import HealthView
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.responses import Response as HttpResponse

from control_plane.api.context import services
from control_plane.api.http import send
from control_plane.api.security import TokenUser
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import GpufleetError, Unauthorized
from control_plane.metrics import CONTENT_TYPE


def package_version() -> str:
    """The version, from its one place (``gpufleet/_version.py``, read by the build too)."""
    return __version__


async def _check(fn: object) -> str:
    try:
        await run_in_threadpool(fn)  # type: ignore[arg-type]
    except GpufleetError as exc:
        return f"error: {exc.message}"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def health(request: Request) -> HttpResponse:
    checks = services(request).checks
    names = sorted(checks)
    results = await asyncio.gather(*(_check(checks[n]) for n in names))
    report = dict(zip(names, results, strict=True))
    ok = all(r == "ok" for r in results)
    view = HealthView(status="ok" if ok else "degraded", version=package_version(), checks=report)
    return send(view, 200 if ok else 503)


def metrics_allowed(request: Request) -> None:
    """/metrics shows every tenant's model names and queue depths: it needs the scraper's
    ``metrics_token`` or an admin access token, unless ``metrics_public`` is set (or it is
    served on the separate ``metrics_listen`` listener, ``control_plane.http_server``)."""
    settings = services(request).settings
    if settings.metrics_public:
        return
    token = settings.metrics_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
    ):
        return
    user = request.scope.get("user")
    if isinstance(user, TokenUser):
        user.principal.require("admin")
        return
    raise Unauthorized("/metrics needs the metrics token or an admin access token")


async def metrics(request: Request) -> HttpResponse:
    metrics_allowed(request)
    body = await run_in_threadpool(request.app.state.metrics.render)
    return HttpResponse(body, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> HttpResponse:
    return JSONResponse(request.app.state.openapi)


ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v1/health",
        health,
        "Liveness and storage reachability (503 degraded)",
        HealthView,
        security="none",
    ),
    route(
        "GET",
        "/metrics",
        metrics,
        "Prometheus metrics (the metrics token or an admin access token; see "
        "docs/security.md#metadata-across-tenants)",
        None,
        content_type="text/plain",
    ),
    route("GET", "/openapi.json", openapi, "This document", None, security="none"),
]
