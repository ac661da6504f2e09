"""Console pages (GET): each asks one or two services, as the API handlers do, and renders.

Pages poll themselves for their ``#live`` part (htmx ``every 2s`` with ``hx-select``), so a
page updates without reload on any replica.
"""

from __future__ import annotations

from typing import Any

from gpufleet.wire import DeploymentView, JobList
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane import clock
from control_plane.api.console import views
from control_plane.api.console.render import page
from control_plane.api.console.session import PREFIX, Session, redirect, safe_next
from control_plane.api.context import services
from control_plane.api.http import query_int
from control_plane.errors import InvalidRequest, NotFound, Unavailable


async def home(request: Request, s: Session) -> Response:
    return redirect(request, f"{PREFIX}/fleet")


async def signin_form(request: Request, s: Session) -> Response:
    nxt = safe_next(request.query_params.get("next"))
    if s.principal is not None:
        return redirect(request, nxt)
    return page(request, s, "signin.html", next=nxt, error=None)


async def fleet(request: Request, s: Session) -> Response:
    svc = services(request)
    runners = (await run_in_threadpool(svc.runners.list_runners, s.p)).runners
    return page(
        request,
        s,
        "fleet.html",
        runners=runners,
        state=views.runner_state,
        triton_state=views.triton_state,
        depths=await run_in_threadpool(svc.jobs.queue_depths) if s.p.is_admin else {},
        regions=await run_in_threadpool(svc.regions.table) if svc.regions is not None else None,
    )


async def models(request: Request, s: Session) -> Response:
    listing = await run_in_threadpool(services(request).models.list_models, s.p)
    return page(request, s, "models.html", models=listing.models)


async def model(request: Request, s: Session) -> Response:
    svc = services(request)
    name = request.path_params["name"]
    view = await run_in_threadpool(svc.models.get, s.p, name)
    deployment: DeploymentView | None = None
    if svc.deployments is not None:
        try:
            deployment = await run_in_threadpool(svc.deployments.get, s.p, name)
        except NotFound:
            deployment = None
    ready = [v for v in view.versions if v.state == "READY"]
    target = ready[-1] if ready else (view.versions[-1] if view.versions else None)
    examples = {i.name: views.example_value(i) for i in target.inputs} if target else {}
    return page(
        request,
        s,
        "model.html",
        model=view,
        deployment=deployment,
        target=target,
        examples=examples,
        result=None,
        error=None,
        values={},
    )


async def jobs(request: Request, s: Session) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in views.JOB_STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(views.JOB_STATUSES)}", field="status"
        )
    model_name = request.query_params.get("model") or None
    since = request.query_params.get("since") or ""
    if since and since not in views.SINCE:
        raise InvalidRequest(f"since must be one of {', '.join(views.SINCE)}", field="since")
    limit = query_int(request, "limit", 25, 1, 200)
    cursor = request.query_params.get("cursor") or None
    listing: JobList = await run_in_threadpool(
        services(request).jobs.list_jobs, s.p, status, model_name, limit, cursor
    )
    found, next_cursor = views.created_since(listing, since, clock.now())
    return page(
        request,
        s,
        "jobs.html",
        jobs=found,
        next_cursor=next_cursor,
        since=since,
        sinces=views.SINCE,
        status=status or "",
        model=model_name or "",
        limit=limit,
        statuses=views.JOB_STATUSES,
    )


async def job(request: Request, s: Session) -> Response:
    svc = services(request)
    job_id = request.path_params["job_id"]
    view = await run_in_threadpool(svc.jobs.get, s.p, job_id)
    inputs = await run_in_threadpool(svc.jobs.inputs, s.p, job_id)
    deliveries = []
    if svc.webhooks is not None:
        try:
            deliveries = (
                await run_in_threadpool(svc.webhooks.delivery_log, s.p, job_id)
            ).deliveries
        except Unavailable:
            deliveries = []
    return page(
        request,
        s,
        "job.html",
        job=view,
        inputs=inputs,
        steps=views.timeline(view),
        terminal=view.status in views.TERMINAL,
        preview=views.preview,
        deliveries=deliveries,
    )


async def admin(request: Request, s: Session) -> Response:
    """API keys and join tokens (admins), the tenant's webhook secret (users and admins)."""
    return await admin_page(request, s)


async def admin_page(request: Request, s: Session, **shown: Any) -> Response:
    """The admin page, with what an action just made (``created``, ``join``, ``secret``,
    ``note``) shown once."""
    s.p.require("jobs:write")
    auth = services(request).auth
    keys = (await run_in_threadpool(auth.list_api_keys, s.p)).keys if s.can("admin") else []
    callers = getattr(services(request).regions, "callers", None)
    region_defaults = (
        await run_in_threadpool(callers.list_all, s.p)
        if callers is not None and s.can("admin")
        else None
    )
    context = {"created": None, "join": None, "secret": None, "note": None, **shown}
    return page(request, s, "admin.html", keys=keys, region_defaults=region_defaults, **context)


async def charts(request: Request, s: Session) -> Response:
    window = request.query_params.get("window") or "hour"
    if window not in ("hour", "day"):
        raise InvalidRequest("window must be hour or day", field="window")
    kinds = ["jobs", "queue", "gpu"] if s.p.is_admin else ["jobs"]
    available = services(request).rollups is not None
    return page(request, s, "charts.html", window=window, kinds=kinds, available=available)


async def chart_data(request: Request, s: Session) -> Response:
    """One chart's columns as JSON, for uPlot (``static/charts.js``)."""
    rollups = services(request).rollups
    if rollups is None:
        raise Unavailable("this control plane keeps no rollups")
    kind = request.query_params.get("kind", "")
    window = request.query_params.get("window", "hour")
    data = await run_in_threadpool(rollups.chart, s.p, kind, window)
    return JSONResponse(data, headers={"Cache-Control": "no-store"})
