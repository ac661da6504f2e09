"""Region defaults of tenants and API keys (admin): ``GET /v1/admin/regions``,
``GET|PUT|DELETE /v1/admin/tenants/{tenant}/regions``,
``GET|PUT|DELETE /v1/admin/api-keys/{key_id}/regions`` (docs/regions.md)."""

from __future__ import annotations

from gpufleet.wire import RegionDefaultsList, RegionDefaultsSpec, RegionDefaultsView
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.admin_scoped import admin_endpoint, path_key_id, path_tenant
from control_plane.api.context import services
from control_plane.api.http import send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.region_defaults import RegionDefaultsService


def _svc(request: Request) -> RegionDefaultsService:
    regions = services(request).regions
    callers = getattr(regions, "callers", None)
    if not isinstance(callers, RegionDefaultsService):
        raise Unavailable("region defaults are not available on this control plane")
    return callers


async def list_defaults(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    return send(await run_in_threadpool(_svc(request).list_all, p))


get_tenant = admin_endpoint(_svc, lambda s: s.get_tenant, path_tenant)
put_tenant = admin_endpoint(_svc, lambda s: s.put_tenant, path_tenant, RegionDefaultsSpec)
delete_tenant = admin_endpoint(_svc, lambda s: s.delete_tenant, path_tenant)
get_key = admin_endpoint(_svc, lambda s: s.get_key, path_key_id)
put_key = admin_endpoint(_svc, lambda s: s.put_key, path_key_id, RegionDefaultsSpec)
delete_key = admin_endpoint(_svc, lambda s: s.delete_key, path_key_id)


ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v1/admin/regions",
        list_defaults,
        "Every tenant and API key with region defaults (admin)",
        RegionDefaultsList,
    ),
    route(
        "GET",
        "/v1/admin/tenants/{tenant}/regions",
        get_tenant,
        "A tenant's region defaults: default_region, regions_allowed (admin)",
        RegionDefaultsView,
    ),
    route(
        "PUT",
        "/v1/admin/tenants/{tenant}/regions",
        put_tenant,
        "Set a tenant's region defaults; replaces its tenant_regions setting (admin)",
        RegionDefaultsView,
        request=RegionDefaultsSpec,
    ),
    route(
        "DELETE",
        "/v1/admin/tenants/{tenant}/regions",
        delete_tenant,
        "Remove a tenant's stored region defaults; the tenant_regions setting applies (admin)",
        RegionDefaultsView,
    ),
    route(
        "GET",
        "/v1/admin/api-keys/{key_id}/regions",
        get_key,
        "An API key's region defaults and the effective ones with its tenant's (admin)",
        RegionDefaultsView,
    ),
    route(
        "PUT",
        "/v1/admin/api-keys/{key_id}/regions",
        put_key,
        "Set an API key's region defaults; its limit stays inside its tenant's (admin)",
        RegionDefaultsView,
        request=RegionDefaultsSpec,
    ),
    route(
        "DELETE",
        "/v1/admin/api-keys/{key_id}/regions",
        delete_key,
        "Remove an API key's region defaults; its tenant's apply (admin)",
        RegionDefaultsView,
    ),
]
