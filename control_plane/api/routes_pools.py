"""Capacity pools (admin): ``PUT/GET/DELETE /v1/pools/{name}``, ``GET /v1/pools``."""

from __future__ import annotations

from gpufleet.wire import JoinTokenCreated, PoolList, PoolSpec, PoolView, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import services
from control_plane.api.http import read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable
from control_plane.services.capacity.service import CapacityService


class PoolDeleted(Response):
    name: str
    deleted: bool = True


def _capacity(request: Request) -> CapacityService:
    svc = services(request).capacity
    if svc is None:
        raise Unavailable("the capacity autoscaler is not enabled on this control plane")
    return svc


async def put_pool(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, PoolSpec, required=True)
    name = request.path_params["name"]
    return send(await run_in_threadpool(_capacity(request).put, p, name, req))


async def get_pool(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    return send(await run_in_threadpool(_capacity(request).get, p, name))


async def pool_join_token(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    return send(await run_in_threadpool(_capacity(request).pool_join_token, p, name), 201)


async def list_pools(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(_capacity(request).list_pools, p))


async def delete_pool(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    await run_in_threadpool(_capacity(request).delete, p, name)
    return send(PoolDeleted(name=name))


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/pools/{name}/join-token",
        pool_join_token,
        "A join token shared by the pool's hosts, with the pool's use limit and lifetime "
        "(admin; aws-asg launch templates)",
        JoinTokenCreated,
        status=201,
    ),
    route("GET", "/v1/pools", list_pools, "List capacity pools (admin)", PoolList),
    route(
        "PUT",
        "/v1/pools/{name}",
        put_pool,
        "Create or replace a capacity pool (admin)",
        PoolView,
        request=PoolSpec,
        body_required=True,
    ),
    route(
        "GET",
        "/v1/pools/{name}",
        get_pool,
        "A pool, its last capacity decision and decision log (admin)",
        PoolView,
    ),
    route(
        "DELETE",
        "/v1/pools/{name}",
        delete_pool,
        "Delete a pool that has no hosts left (admin)",
        PoolDeleted,
    ),
]
