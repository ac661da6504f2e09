"""Tenant quotas and API-key limits: ``GET /v1/quotas`` (the caller's tenant), and for admins
``GET /v1/admin/quotas``, ``GET|PUT|DELETE /v1/admin/tenants/{tenant}/quotas``,
``GET|PUT /v1/admin/api-keys/{key_id}/limits`` (docs/quotas.md)."""

from __future__ import annotations

import re
from typing import TypeVar

from gpufleet.wire import NAME_PATTERN, KeyLimits, KeyLimitsSpec, QuotaList, QuotaSpec, QuotaView
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import services
from control_plane.api.http import parse_body, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import InvalidRequest, Unavailable
from control_plane.services.quotas import QuotaService

M = TypeVar("M", bound=BaseModel)
_NAME = re.compile(NAME_PATTERN)
_KEY_ID = re.compile(r"key_[A-Za-z0-9]{1,64}")


async def _body(request: Request, model: type[M]) -> M:
    """The body as ``model``; a PUT without a body stores nothing (422)."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("a JSON object body is required", field="body")
    return parse_body(raw, model)


def _quotas(request: Request) -> QuotaService:
    svc = getattr(services(request).jobs, "quotas", None)
    if not isinstance(svc, QuotaService):
        raise Unavailable("tenant quotas are not available on this control plane")
    return svc


def _tenant(request: Request) -> str:
    tenant = str(request.path_params["tenant"])
    if not _NAME.fullmatch(tenant):
        raise InvalidRequest(f"tenant must match {NAME_PATTERN}", field="tenant")
    return tenant


def _key_id(request: Request) -> str:
    key_id = str(request.path_params["key_id"])
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidRequest("key_id must be an API key id (key_…)", field="key_id")
    return key_id


async def my_quota(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(_quotas(request).my_quota, p))


async def list_quotas(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(_quotas(request).list_quotas, p))


async def get_quota(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    return send(await run_in_threadpool(_quotas(request).get_quota, p, _tenant(request)))


async def put_quota(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    tenant = _tenant(request)
    spec = await _body(request, QuotaSpec)
    return send(await run_in_threadpool(_quotas(request).put_quota, p, tenant, spec))


async def delete_quota(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    return send(await run_in_threadpool(_quotas(request).delete_quota, p, _tenant(request)))


async def get_key_limits(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    return send(await run_in_threadpool(_quotas(request).get_key_limits, p, _key_id(request)))


async def put_key_limits(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("admin")
    key_id = _key_id(request)
    spec = await _body(request, KeyLimitsSpec)
    return send(await run_in_threadpool(_quotas(request).set_key_limits, p, key_id, spec))


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
