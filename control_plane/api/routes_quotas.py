"""Tenant quotas and API-key limits: ``GET /v1/quotas`` (the caller's tenant), and for admins
``GET /v1/admin/quotas``, ``GET|PUT|DELETE /v1/admin/tenants/{tenant}/quotas``,
``GET|PUT /v1/admin/api-keys/{key_id}/limits`` (docs/quotas.md)."""

from __future__ import annotations

from gpufleet.wire import KeyLimits, KeyLimitsSpec, QuotaList, QuotaSpec, QuotaView
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.admin_scoped import admin_endpoint, path_key_id, path_tenant
from control_plane.api.context import services
from control_plane.api.http import send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.quotas import QuotaService


def _quotas(request: Request) -> QuotaService:
    svc = getattr(services(request).jobs, "quotas", None)
    if not isinstance(svc, QuotaService):
        raise Unavailable("tenant quotas are not available on this control plane")
    return svc


async def my_quota(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(_quotas(request).my_quota, p))


async def list_quotas(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(_quotas(request).list_quotas, p))


get_quota = admin_endpoint(_quotas, lambda s: s.get_quota, path_tenant)
put_quota = admin_endpoint(_quotas, lambda s: s.put_quota, path_tenant, QuotaSpec)
delete_quota = admin_endpoint(_quotas, lambda s: s.delete_quota, path_tenant)
get_key_limits = admin_endpoint(_quotas, lambda s: s.get_key_limits, path_key_id)
put_key_limits = admin_endpoint(_quotas, lambda s: s.set_key_limits, path_key_id, KeyLimitsSpec)


ROUTES: list[DocumentedRoute] = [
    route("GET", "/v1/quotas", my_quota, "The caller's tenant's quotas and usage", QuotaView),
    route(
        "GET",
        "/v1/admin/quotas",
        list_quotas,
        "Default quotas and every tenant's quotas and usage (admin)",
        QuotaList,
    ),
    route(
        "GET",
        "/v1/admin/tenants/{tenant}/quotas",
        get_quota,
        "A tenant's quotas and usage (admin)",
        QuotaView,
    ),
    route(
        "PUT",
        "/v1/admin/tenants/{tenant}/quotas",
        put_quota,
        "Set a tenant's own quotas; omitted fields take the defaults (admin)",
        QuotaView,
        request=QuotaSpec,
    ),
    route(
        "DELETE",
        "/v1/admin/tenants/{tenant}/quotas",
        delete_quota,
        "Put a tenant back on the default quotas (admin)",
        QuotaView,
    ),
    route(
        "GET",
        "/v1/admin/api-keys/{key_id}/limits",
        get_key_limits,
        "The highest priority an API key may submit at (admin)",
        KeyLimits,
    ),
    route(
        "PUT",
        "/v1/admin/api-keys/{key_id}/limits",
        put_key_limits,
        "Set the highest priority an API key may submit at; null: the default (admin)",
        KeyLimits,
        request=KeyLimitsSpec,
    ),
]
