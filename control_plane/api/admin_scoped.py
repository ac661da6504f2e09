"""Admin routes on one tenant or one API key, built from the service method they call.

The quota, key-limit and region-default routes all read the same way: require ``admin``,
resolve the service, take the tenant or key id from the path (checked: 422 naming the
field), take the JSON body for a PUT, call the service on a worker thread, send its answer.
:func:`admin_endpoint` builds such an endpoint, so each of those modules lists only what
differs: the service, the method and the body model.

    get_tenant = admin_endpoint(_svc, lambda s: s.get_tenant, path_tenant)
    put_tenant = admin_endpoint(_svc, lambda s: s.put_tenant, path_tenant, RegionDefaultsSpec)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gpufleet.wire import NAME_PATTERN
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.http import parse_body, send
from control_plane.api.security import principal
from control_plane.errors import InvalidRequest

__all__ = ["admin_endpoint", "json_body", "path_key_id", "path_tenant"]

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S")
_NAME = re.compile(NAME_PATTERN)
_KEY_ID = re.compile(r"key_[A-Za-z0-9]{1,64}")


async def json_body(request: Request, model: type[M]) -> M:
    """The body as ``model``; a PUT without a body stores nothing (422)."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("a JSON object body is required", field="body")
    return parse_body(raw, model)


def path_tenant(request: Request) -> str:
    """The ``{tenant}`` path parameter; 422 naming ``tenant`` when it is not a name."""
    tenant = str(request.path_params["tenant"])
    if not _NAME.fullmatch(tenant):
        raise InvalidRequest(f"tenant must match {NAME_PATTERN}", field="tenant")
    return tenant


def path_key_id(request: Request) -> str:
    """The ``{key_id}`` path parameter; 422 naming ``key_id`` when it is not a key id."""
    key_id = str(request.path_params["key_id"])
    if not _KEY_ID.fullmatch(key_id):
        raise InvalidRequest("key_id must be an API key id (key_…)", field="key_id")
    return key_id


def admin_endpoint(
    service: Callable[[Request], S],
    method: Callable[[S], Callable[..., Any]],
    target: Callable[[Request], str],
    body: type[BaseModel] | None = None,
) -> Callable[[Request], Awaitable[HttpResponse]]:
    """An admin-only endpoint calling ``method(service(request))(principal, target(request)
    [, body])`` on a worker thread and sending its answer. The path parameter is checked
    before the body is read, as each route did by hand."""

    async def endpoint(request: Request) -> HttpResponse:
        p = principal(request)
        p.require("admin")
        args: list[Any] = [p, target(request)]
        if body is not None:
            args.append(await json_body(request, body))
        call = method(service(request))
        return send(await run_in_threadpool(call, *args))

    return endpoint
