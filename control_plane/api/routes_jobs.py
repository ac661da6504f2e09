"""Job routes: submit (idempotent), batch, get (long poll), list, cancel."""

from __future__ import annotations

from typing import get_args

from gpufleet._logs import bind
from gpufleet.wire import (
    TERMINAL_STATUSES,
    BatchAccepted,
    BatchJobRequest,
    JobAccepted,
    JobList,
    JobLogs,
    JobRequest,
    JobStatus,
    JobView,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from control_plane.api.context import services
from control_plane.api.http import header, query_float, query_int, read_model, send
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, route
from control_plane.clock import iso
from control_plane.errors import InvalidRequest
from control_plane.services.text import check_text

IDEMPOTENCY_HEADER = "Idempotency-Key"
PREFER_HEADER = "Prefer"
_IDEMPOTENCY = IDEMPOTENCY_HEADER.lower().encode()
_PREFER = PREFER_HEADER.lower().encode()
_STATUSES: tuple[str, ...] = get_args(JobStatus)


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1-255 characters, none of them a control or bidi
    character (a key is stored and shown back)."""
    key = header(request, _IDEMPOTENCY)
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidRequest("Idempotency-Key must be 1-255 characters", field=IDEMPOTENCY_HEADER)
    if key is not None:
        check_text(key, "Idempotency-Key", IDEMPOTENCY_HEADER)
    return key


async def submit(request: Request) -> Response:
    p = principal(request)
    req = await read_model(request, JobRequest)
    bind(model=req.model)  # log lines about this request name the model (then the job)
    key = idempotency_key(request)
    svc = services(request)
    wait_s = prefer_wait(request, svc.settings.max_wait_s)
    jobs = svc.jobs
    # the record, not the wire view: only its id, status and creation time are answered
    job, created = await jobs.offload(jobs.submit_record, p, req, key)
    bind(job=job.id)
    if created:
        metrics = request.scope["app"].state.metrics
        metrics.child(metrics.jobs_submitted, req.model).inc()
    if wait_s is not None:
        # ``Prefer: wait=N``: the job as GET answers it once terminal or after N seconds, in
        # the same call (one request instead of a submit and a long poll).
        view = await jobs.wait(p, job.id, wait_s, known=job)  # no read of what it knows
        done = view.status in TERMINAL_STATUSES
        response = send(view, 200 if done or not created else 202)
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
        return response
    # (validated: pydantic's model_construct is slower for a model with defaults)
    accepted = JobAccepted(id=job.id, status=job.status, created_at=iso(job.created_at) or "")
    return send(accepted, 202 if created else 200)


def prefer_wait(request: Request, max_wait_s: float) -> float | None:
    """The ``wait`` preference of an RFC 7240 ``Prefer`` header in seconds (at most
    ``max_wait_s``; a bare ``wait`` means that much), None when not asked for."""
    raw = header(request, _PREFER)
    if not raw:
        return None
    for pref in raw.replace(";", ",").split(","):
        name, sep, value = pref.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not sep:
            return max_wait_s
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            raise InvalidRequest(
                "Prefer: wait must be a number of seconds (e.g. wait=10)", field=PREFER_HEADER
            )
        return min(seconds, max_wait_s)
    return None


async def submit_batch(request: Request) -> Response:
    p = principal(request)
    req = await read_model(request, BatchJobRequest)
    key = idempotency_key(request)
    ids = await run_in_threadpool(services(request).jobs.submit_batch, p, list(req.jobs), key)
    metrics = request.app.state.metrics
    for job in req.jobs:
        metrics.child(metrics.jobs_submitted, job.model).inc()
    return send(BatchAccepted(ids=ids), 202)


async def get_job(request: Request) -> Response:
    p = principal(request)
    svc = services(request)
    wait_s = query_float(request, "wait_s", 0.0, 0.0, svc.settings.max_wait_s)
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    if wait_s > 0:
        return send(await svc.jobs.wait(p, job_id, wait_s))
    return send(await svc.jobs.offload(svc.jobs.get, p, job_id))


async def list_jobs(request: Request) -> Response:
    p = principal(request)
    status = (request.query_params.get("status") or "").upper() or None  # any case
    if status is not None and status not in _STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(_STATUSES)}", field="status")
    model = request.query_params.get("model") or None
    limit = query_int(request, "limit", 50, 1, 500)
    cursor = request.query_params.get("cursor") or None
    jobs = services(request).jobs
    return send(await run_in_threadpool(jobs.list_jobs, p, status, model, limit, cursor))


async def cancel_job(request: Request) -> Response:
    p = principal(request)
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    return send(await run_in_threadpool(services(request).jobs.cancel, p, job_id))


async def job_logs(request: Request) -> Response:
    p = principal(request)
    job_id = request.path_params["job_id"]
    bind(job=job_id)
    return send(await run_in_threadpool(services(request).jobs.logs, p, job_id))


ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/jobs",
        submit,
        "Submit a job (202; 200 on an idempotent replay). With `Prefer: wait=N` the call "
        "waits up to N s (<= max_wait_s) and answers the job as GET does: 200 once terminal, "
        "202 if still running",
        JobAccepted,
        status=202,
        request=JobRequest,
        headers={
            IDEMPOTENCY_HEADER: "Same key + same body within 24 h returns the same job; "
            "a different body is 409.",
            PREFER_HEADER: "wait=N: hold the answer until the job is terminal or N seconds "
            "pass (RFC 7240; Preference-Applied says the wait used)",
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
        headers={
            IDEMPOTENCY_HEADER: "Same key + same jobs within 24 h returns the same ids (and "
            "stores any job a failed first submit left out); different jobs are 409."
        },
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
    route(
        "GET",
        "/v1/jobs/{job_id}/logs",
        job_logs,
        "The job's logs: its runner's lines about it and what the model printed while it ran "
        "(sent with the result, up to 64 KiB; empty before)",
        JobLogs,
    ),
]
