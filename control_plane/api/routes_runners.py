"""Runner routes: registration, the HMAC-signed job protocol, and fleet administration.

Signed routes (heartbeat, lease, extend, complete, batch complete) verify the signature over
the exact request path and body before parsing; the runner header must equal ``{runner_id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from gpufleet.wire import (
    BatchCompleteRequest,
    BatchCompleteResponse,
    CompleteRequest,
    CompleteResponse,
    ExtendRequest,
    ExtendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JoinTokenCheck,
    JoinTokenCheckRequest,
    LeaseRequest,
    LeaseResponse,
    RegionTable,
    RegisterRequest,
    RegisterResponse,
    Response,
    RunnerConfigPatch,
    RunnerList,
    RunnerView,
)
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response as HttpResponse

from control_plane.api.context import services
from control_plane.api.http import parse_body, read_model, send
from control_plane.api.job_protocol import complete_jobs, lease_jobs
from control_plane.api.security import client_address, principal, signed_runner
from control_plane.api.spec import DocumentedRoute, Security, route
from control_plane.errors import NotFound


class RunnerRevoked(Response):
    id: str
    revoked: bool = True


async def register(request: Request) -> HttpResponse:
    req = await read_model(request, RegisterRequest)
    runners, client = services(request).runners, client_address(request)
    return send(await run_in_threadpool(runners.register, req, client), 201)


async def check_join_token(request: Request) -> HttpResponse:
    req = await read_model(request, JoinTokenCheckRequest)
    auth, client = services(request).auth, client_address(request)
    return send(await run_in_threadpool(auth.check_join_token, req.join_token, client))


async def heartbeat(request: Request) -> HttpResponse:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, HeartbeatRequest)
    return send(await run_in_threadpool(svc.runners.heartbeat, runner, req))


DISCONNECT_CHECK_S = 0.1


async def _while_connected(request: Request, poll: Awaitable[LeaseResponse]) -> LeaseResponse:
    """Run a lease long poll, abandoning it once the runner has hung up: a poll left running
    for a killed runner would claim jobs for nobody, each costing an attempt and a lease
    expiry. (Behind API Gateway/Mangum no disconnect is reported: the poll just runs.)"""
    task = asyncio.ensure_future(poll)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_CHECK_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                return LeaseResponse(jobs=[])  # nobody reads it
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def lease(request: Request) -> HttpResponse:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, LeaseRequest)
    return send(
        await lease_jobs(
            request.app.state, svc, runner, req, lambda poll: _while_connected(request, poll)
        )
    )


async def extend(request: Request) -> HttpResponse:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, ExtendRequest)
    job_id = request.path_params["job_id"]
    return send(await run_in_threadpool(svc.jobs.extend, runner.id, job_id, req.lease_token))


async def complete(request: Request) -> HttpResponse:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, CompleteRequest)
    job_id = request.path_params["job_id"]
    out = await run_in_threadpool(svc.jobs.complete, runner.id, job_id, req)
    if request.app.state.count_completions:  # else the jobs service's transition hook counts
        request.app.state.metrics.jobs_completed.labels("unknown", out.status).inc()
    return send(out)


async def complete_batch(request: Request) -> HttpResponse:
    svc = services(request)
    runner, body = await signed_runner(request, svc.runners, request.path_params["runner_id"])
    req = parse_body(body, BatchCompleteRequest)
    return send(await complete_jobs(request.app.state, svc, runner.id, req))


async def list_runners(request: Request) -> HttpResponse:
    p = principal(request)
    region = request.query_params.get("region") or None
    return send(await run_in_threadpool(services(request).runners.list_runners, p, region))


async def list_regions(request: Request) -> HttpResponse:
    p = principal(request)
    p.require("runners:read")
    regions = services(request).regions
    if regions is None:
        raise NotFound("regions are not enabled on this control plane")
    table = await run_in_threadpool(regions.table)
    return send(RegionTable.model_validate(table))


async def patch_config(request: Request) -> HttpResponse:
    p = principal(request)
    req = await read_model(request, RunnerConfigPatch)
    runner_id = request.path_params["runner_id"]
    return send(await run_in_threadpool(services(request).runners.patch_config, p, runner_id, req))


async def rotate_secret(request: Request) -> HttpResponse:
    p = principal(request)
    runner_id = request.path_params["runner_id"]
    return send(await run_in_threadpool(services(request).runners.rotate_secret, p, runner_id))


async def revoke(request: Request) -> HttpResponse:
    p = principal(request)
    runner_id = request.path_params["runner_id"]
    await run_in_threadpool(services(request).runners.revoke, p, runner_id)
    return send(RunnerRevoked(id=runner_id))


_SIGNED: Security = "runner"
ROUTES: list[DocumentedRoute] = [
    route(
        "POST",
        "/v1/runners/register",
        register,
        "Register a runner with a join token",
        RegisterResponse,
        status=201,
        request=RegisterRequest,
        security="none",
    ),
    route(
        "POST",
        "/v1/runners/join-tokens/check",
        check_join_token,
        "Would this join token register a runner now? (uses none of it; 401 with the reason)",
        JoinTokenCheck,
        request=JoinTokenCheckRequest,
        security="none",
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/heartbeat",
        heartbeat,
        "Report GPUs, models, Triton metrics; get config and jobs to cancel",
        HeartbeatResponse,
        request=HeartbeatRequest,
        security=_SIGNED,
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/lease",
        lease,
        "Long-poll for jobs of the given models (wait_s <= 20)",
        LeaseResponse,
        request=LeaseRequest,
        security=_SIGNED,
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/jobs/{job_id}/extend",
        extend,
        "Extend a job's lease",
        ExtendResponse,
        request=ExtendRequest,
        security=_SIGNED,
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/jobs/{job_id}/complete",
        complete,
        "Commit a job's result (409 on a stale lease token)",
        CompleteResponse,
        request=CompleteRequest,
        security=_SIGNED,
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/complete",
        complete_batch,
        "Commit up to 100 results, each fenced by its own lease token (a stale one is that "
        "item's conflict, inside a 200 answer)",
        BatchCompleteResponse,
        request=BatchCompleteRequest,
        security=_SIGNED,
    ),
    route(
        "GET",
        "/v1/runners",
        list_runners,
        "List runners with status, and counts by region (admin, user)",
        RunnerList,
        query={"region": "Only the runners of this region"},
    ),
    route(
        "GET",
        "/v1/regions",
        list_regions,
        "Live regions, measured round trips and the region-to-region latency table",
        RegionTable,
    ),
    route(
        "PATCH",
        "/v1/runners/{runner_id}/config",
        patch_config,
        "Merge runtime settings into a runner's config (admin)",
        RunnerView,
        request=RunnerConfigPatch,
    ),
    route(
        "POST",
        "/v1/runners/{runner_id}/rotate-secret",
        rotate_secret,
        "Rotate a runner's HMAC secret now: the next heartbeat answer carries the new one (admin)",
        RunnerView,
    ),
    route(
        "DELETE",
        "/v1/runners/{runner_id}",
        revoke,
        "Revoke a runner (admin; extension to api-v1)",
        RunnerRevoked,
    ),
]
