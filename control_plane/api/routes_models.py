"""Model repository routes: create a version (presigned uploads), commit, list, get, delete."""

from __future__ import annotations

from gpufleet.wire import (
    CommitRequest,
    CreateVersionRequest,
    CreateVersionResponse,
    DeploymentSpec,
    DeploymentView,
    ModelList,
    ModelVersionView,
    ModelView,
    Response,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import DeploymentsPort, services
from control_plane.api.http import read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import Unavailable


class VersionDeleted(Response):
    name: str
    version: str
    deleted: bool = True


async def create_version(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, CreateVersionRequest)
    name = request.path_params["name"]
    out = await run_in_threadpool(services(request).models.create_version, p, name, req)
    return send(out, 200 if out.state == "READY" else 201)  # READY: the same content exists


async def commit(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, CommitRequest)
    name, version = request.path_params["name"], request.path_params["version"]
    return send(await run_in_threadpool(services(request).models.commit, p, name, version, req))


async def list_models(request: Request) -> HttpResponse:
    p = principal(request)
    return send(await run_in_threadpool(services(request).models.list_models, p))


async def get_model(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    return send(await run_in_threadpool(services(request).models.get, p, name))


async def delete_version(request: Request) -> HttpResponse:
    p = principal(request)
    name, version = request.path_params["name"], request.path_params["version"]
    await run_in_threadpool(services(request).models.delete_version, p, name, version)
    return send(VersionDeleted(name=name, version=version))


class NameReleased(Response):
    name: str
    released: bool = True


async def release_name(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    await run_in_threadpool(services(request).models.release, p, name)
    return send(NameReleased(name=name))


def _deployments(request: Request) -> DeploymentsPort:
    svc = services(request).deployments
    if svc is None:
        raise Unavailable("placement is not configured on this control plane")
    return svc


async def put_deployment(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, DeploymentSpec, required=True)
    name = request.path_params["name"]
    return send(await run_in_threadpool(_deployments(request).put, p, name, req))


async def get_deployment(request: Request) -> HttpResponse:
    p = principal(request)
    name = request.path_params["name"]
    return send(await run_in_threadpool(_deployments(request).get, p, name))


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/models/{name}/versions",
        create_version,
        "Start a model version upload (presigned URLs); 200 with the existing READY version "
        "when one holds the same files",
        CreateVersionResponse,
        status=201,
        request=CreateVersionRequest,
    ),
    route(
        "POST",
        "/v1/models/{name}/versions/{version}/commit",
        commit,
        "Verify the uploaded files and make the version READY",
        ModelVersionView,
        request=CommitRequest,
    ),
    route("GET", "/v1/models", list_models, "List models", ModelList),
    route("GET", "/v1/models/{name}", get_model, "A model with its versions", ModelView),
    route(
        "DELETE",
        "/v1/models/{name}/versions/{version}",
        delete_version,
        "Delete a model version",
        VersionDeleted,
    ),
    route(
        "DELETE",
        "/v1/models/{name}",
        release_name,
        "Release a model name that holds no version (409 while versions or a deployment "
        "remain), so any tenant may claim it again",
        NameReleased,
    ),
    route(
        "PUT",
        "/v1/models/{name}/deployment",
        put_deployment,
        "Set a model's deployment (replicas, regions, GPU memory); answers the placement",
        DeploymentView,
        request=DeploymentSpec,
        body_required=True,
    ),
    route(
        "GET",
        "/v1/models/{name}/deployment",
        get_deployment,
        "A model's deployment: desired spec, decided placement, observed states",
        DeploymentView,
    ),
]
