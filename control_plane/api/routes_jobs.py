"""Job routes: submit (idempotent), batch, get (long poll), list, cancel."""

from __future__ import annotations

from gpufleet._logs import bind
from gpufleet.wire import (
    BatchAccepted,
    BatchJobRequest,
    JobAccepted,
    JobList,
    JobRequest,
    JobStatus,
    JobView,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.context import services
from control_plane.api.http import query_float, query_int, read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.errors import InvalidRequest

IDEMPOTENCY_HEADER = "Idempotency-Key"
_STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


async def submit(request: Request) -> Response:
    p = principal(request)
    req = await read_model(request, JobRequest)
    bind(model=req.model)  # log lines about this request name the model (then the job)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters", field=IDEMPOTENCY_HEADER)
    view, created = await run_in_threadpool(services(request).jobs.submit, p, req, key)
    bind(job=view.id)
    if created:
        request.app.state.metrics.jobs_submitted.labels(req.model).inc()
    accepted = JobAccepted(id=view.id, status=view.status, created_at=view.created_at)
    return send(accepted, 202 if created else 200)


async def submit_batch(request: Request) -> Response:
    p = principal(request)
    req = await read_model(request, BatchJobRequest)
    ids = await run_in_threadpool(services(request).jobs.submit_batch, p, list(req.jobs))
    for job in req.jobs:
        request.app.state.metrics.jobs_submitted.labels(job.model).inc()
    return send(BatchAccepted(ids=ids), 202)


async def get_job(request: Request) -> Response:
    p = principal(request)
    svc = services(request)
    wait_s = query_float(request, "wait_s", 0.0, 0.0, svc.settings.max_wait_s)
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    if wait_s > 0:
        return send(await svc.jobs.wait(p, job_id, wait_s))
    return send(await run_in_threadpool(svc.jobs.get, p, job_id))


async def list_jobs(request: Request) -> Response:
    p = principal(request)
    status = (request.query_params.get("status") or "").upper() or None  # any case
    if status is not None and status not in _STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(_STATUSES)}", field="status")
    model = request.query_params.get("model") or None
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = request.query_params.get("cursor") or None
    jobs = services(request).jobs
    return send(await run_in_threadpool(jobs.list, p, status, model, limit, cursor))


async def cancel_job(request: Request) -> Response:
    p = principal(request)
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    return send(await run_in_threadpool(services(request).jobs.cancel, p, job_id))


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/jobs",
        submit,
        "Submit a job (202; 200 on an idempotent replay)",
        JobAccepted,
        status=202,
        request=JobRequest,
        headers={
            IDEMPOTENCY_HEADER: "Same key + same body within 24 h returns the same job; "
            "a different body is 409."
        },
    ),
    route(
        "POST",
        "/v1/jobs/batch",
        submit_batch,
        "Submit up to 100 jobs",
        BatchAccepted,
        status=202,
        request=BatchJobRequest,
    ),
    route(
        "GET",
        "/v1/jobs",
        list_jobs,
        "List the caller's jobs",
        JobList,
        query={
            "status": "filter by status",
            "model": "filter by model",
            "limit": "1-500 (default 50)",
            "cursor": "next_cursor of the previous page",
        },
    ),
    route(
        "GET",
        "/v1/jobs/{job_id}",
        get_job,
        "Get a job; wait_s <= 30 long-polls until terminal",
        JobView,
        query={"wait_s": "seconds to wait for a terminal status (0-30)"},
    ),
    route(
        "POST", "/v1/jobs/{job_id}/cancel", cancel_job, "Cancel a job (409 if terminal)", JobView
    ),
]
