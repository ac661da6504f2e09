"""The runner's job protocol (lease, batch complete), whatever carries it.

The signed HTTP routes (``routes_runners.py``) and the runner's channel
(``routes_channel.py``, one authenticated WebSocket per runner) call the same two functions,
so a job leased or completed over either has the same semantics: the lease is fenced by its
token, a stale token is refused for that item only, a draining runner gets no new work.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from gpufleet.wire import (
    BatchCompleteRequest,
    BatchCompleteResponse,
    ChunksRequest,
    ChunksResponse,
    LeaseRequest,
    LeaseResponse,
)

from control_plane.api.context import Services
from control_plane.errors import Forbidden, Unavailable
from control_plane.services.runners import MOCK_REFUSED, is_mock
from control_plane.storage.protocols_auth import RunnerRecord

__all__ = ["append_chunks", "complete_jobs", "lease_jobs"]


async def lease_jobs(
    state: Any,
    svc: Services,
    runner: RunnerRecord,
    req: LeaseRequest,
    guard: Callable[[Awaitable[LeaseResponse]], Awaitable[LeaseResponse]] | None = None,
) -> LeaseResponse:
    """Claim up to ``req.max_jobs`` jobs for ``runner``, waiting up to ``req.wait_s`` (capped
    by settings). ``guard`` wraps the long poll (the HTTP route abandons it when the runner
    hangs up). ``state`` is the app's state (metrics)."""
    start = time.perf_counter()
    if is_mock(runner) and not svc.settings.allow_mock_runners:
        raise Forbidden(MOCK_REFUSED)
    if svc.runners.config_of(runner).drain:
        out = LeaseResponse(jobs=[])  # a draining runner finishes what it has, takes nothing
    else:
        if req.wait_s > svc.settings.max_lease_wait_s:  # (a copy only when it changes)
            req = req.model_copy(update={"wait_s": svc.settings.max_lease_wait_s})
        poll = svc.jobs.lease(runner.id, runner.region, req)
        out = await (guard(poll) if guard is not None else poll)
    metrics = state.metrics
    outcome = "jobs" if out.jobs else "empty"
    metrics.child(metrics.lease_latency, outcome).observe(time.perf_counter() - start)
    return out


async def complete_jobs(
    state: Any, svc: Services, runner_id: str, req: BatchCompleteRequest
) -> BatchCompleteResponse:
    """Commit up to 100 results, each fenced by its own lease token."""
    results = await svc.jobs.offload(svc.jobs.complete_batch, runner_id, req.results)
    if state.count_completions:  # else the jobs service's transition hook counts
        for item, result in zip(req.results, results, strict=True):
            if result.status == "committed":
                state.metrics.child(state.metrics.jobs_completed, "unknown", item.status).inc()
    return BatchCompleteResponse(results=results)


async def append_chunks(svc: Services, runner_id: str, req: ChunksRequest) -> ChunksResponse:
    """Store partial outputs of a running job (docs/streaming.md), fenced by its lease token
    (``StaleLease``, 409: the runner stops streaming that job)."""
    if svc.streams is None:
        raise Unavailable("this control plane keeps no streams (no stream store)")
    return await svc.jobs.offload(svc.streams.append, runner_id, req)
