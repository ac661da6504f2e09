"""Console writes (POST, CSRF-checked by ``session.console``). Each calls the same service
method the API's handler calls with the signed-in principal, so roles and tenants are
enforced by the services, whatever the page showed."""

from __future__ import annotations

from typing import TypeVar

from gpufleet.wire import (
    ApiKeyCreate,
    DeploymentSpec,
    JobRequest,
    JoinTokenCreate,
    RunnerConfigPatch,
)
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.console import views
from control_plane.api.console.pages import admin_page
from control_plane.api.console.render import page
from control_plane.api.console.session import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    PREFIX,
    REFRESH_COOKIE,
    Session,
    new_csrf_cookie,
    redirect,
    safe_next,
)
from control_plane.api.context import services
from control_plane.api.security import client_address
from control_plane.errors import GpufleetError, InvalidRequest, Unauthorized, Unavailable

TRY_IT_TIMEOUT_S = 30.0
M = TypeVar("M", bound=BaseModel)
RUNNER_SETTINGS = tuple(k for k in RunnerConfigPatch.model_fields if k != "api_version")


def _valid(model: type[M], data: dict[str, object]) -> M:
    """``model`` from form data; the first problem names its field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "form"
        raise InvalidRequest(f"{where}: {err['msg']}", field=where) from exc


async def signin(request: Request, s: Session) -> Response:
    nxt = safe_next(s.value("next"))
    try:
        pair = await run_in_threadpool(
            services(request).auth.exchange_api_key,
            s.value("api_key").strip(),
            client_address(request),
        )
    except Unauthorized:
        return page(
            request, s, "signin.html", http_status=401, next=nxt, error="That API key is not valid."
        )
    s.cookies[ACCESS_COOKIE] = pair.access_token
    s.cookies[REFRESH_COOKIE] = pair.refresh_token
    s.cookies[CSRF_COOKIE] = new_csrf_cookie()  # a new session: tokens of before stop working
    return redirect(request, nxt)


async def signout(request: Request, s: Session) -> Response:
    refresh = request.cookies.get(REFRESH_COOKIE)
    if refresh:
        await run_in_threadpool(services(request).auth.revoke_refresh_family, refresh)
    s.clear = True
    s.cookies.pop(ACCESS_COOKIE, None)
    s.cookies.pop(REFRESH_COOKIE, None)
    s.cookies[CSRF_COOKIE] = new_csrf_cookie()
    return redirect(request, f"{PREFIX}/signin")


async def runner_drain(request: Request, s: Session) -> Response:
    runner_id = request.path_params["runner_id"]
    patch = RunnerConfigPatch(drain=s.value("drain") == "true")
    await run_in_threadpool(services(request).runners.patch_config, s.p, runner_id, patch)
    return redirect(request, f"{PREFIX}/fleet")


async def runner_set(request: Request, s: Session) -> Response:
    """What ``gpufleet-runner set KEY VALUE`` does, for the runner the form names."""
    runner_id = s.value("runner")
    key = s.value("key")
    if key not in RUNNER_SETTINGS:
        raise InvalidRequest(f"key must be one of {', '.join(RUNNER_SETTINGS)}", field="key")
    value: object = s.value("value").strip()
    if key == "drain":
        value = str(value).lower() in ("1", "true", "yes", "on")
    patch = _valid(RunnerConfigPatch, {key: value})
    await run_in_threadpool(services(request).runners.patch_config, s.p, runner_id, patch)
    return redirect(request, f"{PREFIX}/fleet")


async def deployment_put(request: Request, s: Session) -> Response:
    name = request.path_params["name"]
    deployments = services(request).deployments
    if deployments is None:
        raise Unavailable("deployments are not configured on this control plane")
    spec = _valid(
        DeploymentSpec,
        {
            "min_replicas": s.value("min_replicas").strip() or "0",
            "max_replicas": s.value("max_replicas").strip() or "0",
            "regions": views.parse_regions(s.value("regions")),
            "gpu_memory_mb": s.value("gpu_memory_mb").strip() or None,
        },
    )
    await run_in_threadpool(deployments.put, s.p, name, spec)
    return redirect(request, f"{PREFIX}/models/{name}")


async def try_it(request: Request, s: Session) -> Response:
    """One inference from the model page's form; the outputs (or the error) on the page."""
    svc = services(request)
    name = request.path_params["name"]
    s.p.require("jobs:write")
    view = await run_in_threadpool(svc.models.get, s.p, name)
    version = next((v for v in view.versions if v.version == s.value("version")), None)
    if version is None:
        raise InvalidRequest(f"model {name!r} has no version {s.value('version')!r}", "version")
    values = {k: v for k, v in (s.form or {}).items() if isinstance(v, str)}
    result, error = None, None
    try:
        tensors = views.tensors_from_form(version, values)
        if svc.inference is None:
            raise Unavailable("inference is not configured on this control plane")
        job = JobRequest(model=name, model_version=version.version, inputs=tensors)
        result = await svc.inference.infer(s.p, job, timeout_s=TRY_IT_TIMEOUT_S)
    except GpufleetError as exc:
        error = f"{exc.code}: {exc.message}"
    deployment = None
    if svc.deployments is not None:
        try:
            deployment = await run_in_threadpool(svc.deployments.get, s.p, name)
        except GpufleetError:
            deployment = None
    outputs = [
        {
            "name": o.get("name"),
            "datatype": o.get("datatype"),
            "shape": o.get("shape"),
            "data": o.get("data"),
        }
        if isinstance(o, dict)
        else o.model_dump()
        for o in (result.outputs if result else [])
    ]
    return page(
        request,
        s,
        "model.html",
        http_status=200 if error is None else 422,
        model=view,
        deployment=deployment,
        target=version,
        examples={i.name: values.get(f"input:{i.name}", "") for i in version.inputs},
        result={
            "outputs": outputs,
            "path": result.path,
            "runner_id": result.runner_id,
            "job_id": result.job_id,
        }
        if result
        else None,
        error=error,
        values=values,
    )


async def job_cancel(request: Request, s: Session) -> Response:
    job_id = request.path_params["job_id"]
    await run_in_threadpool(services(request).jobs.cancel, s.p, job_id)
    return redirect(request, f"{PREFIX}/jobs/{job_id}")


async def admin_create_key(request: Request, s: Session) -> Response:
    req = _valid(
        ApiKeyCreate,
        {"tenant": s.value("tenant").strip(), "role": s.value("role"), "name": s.value("name")},
    )
    created = await run_in_threadpool(services(request).auth.create_api_key, s.p, req)
    return await admin_page(request, s, created=created)


async def admin_revoke_key(request: Request, s: Session) -> Response:
    key_id = s.value("key_id").strip()
    if not key_id:
        raise InvalidRequest("enter the id of the key to revoke", field="key_id")
    await run_in_threadpool(services(request).auth.revoke_api_key, s.p, key_id)
    note = f"API key {key_id} is revoked: its sessions end at their next refresh."
    return await admin_page(request, s, note=note)


async def admin_join_token(request: Request, s: Session) -> Response:
    labels: dict[str, str] = {}
    for i, pair in enumerate(views.parse_regions(s.value("labels"))):
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise InvalidRequest(f"labels[{i}]: write key=value", field="labels")
        labels[k.strip()] = v.strip()
    req = _valid(
        JoinTokenCreate,
        {
            "region": s.value("region").strip() or "default",
            "labels": labels,
            "expires_in_s": s.value("expires_in_s").strip() or 3600,
            "max_uses": s.value("max_uses").strip() or 1,
        },
    )
    join = await run_in_threadpool(services(request).auth.create_join_token, s.p, req)
    return await admin_page(request, s, join=join)


async def admin_rotate_webhook_secret(request: Request, s: Session) -> Response:
    webhooks = services(request).webhooks
    if webhooks is None:
        raise Unavailable("webhooks are not configured on this control plane")
    secret = await run_in_threadpool(webhooks.rotate_secret, s.p)
    return await admin_page(request, s, secret=secret)
