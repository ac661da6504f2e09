"""The Starlette app: ``create_app(settings, services)`` builds it around the services the
composition root (``control_plane.composition.build_services``) built once.

Middleware (``api/gate.py``, one ASGI layer doing what, outermost first: the 500 of an
unhandled error, the request id, request timing (metrics), the body limit (413), the request's
storage-time budget (``storage/budget.py``), bearer authentication, and the app's exception
handlers with the one error mapping. (The KServe HTTP infer call of a known token skips all
of it: the listener answers it itself, ``api/kserve_fast.py``.)
The lifespan runs the expiry sweeper (``jobs.sweep()`` every ``sweep_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from control_plane.api import (
    console,
    kserve,
    routes_auth,
    routes_blobs,
    routes_channel,
    routes_direct,
    routes_docs,
    routes_infer,
    routes_jobs,
    routes_models,
    routes_payloads,
    routes_pools,
    routes_quotas,
    routes_region_defaults,
    routes_runners,
    routes_streams,
    routes_system,
    webhook_routes,
)
from control_plane.api.context import JobsPort, Services
from control_plane.api.errors import EXCEPTION_HANDLERS
from control_plane.api.gate import ApiApp, GateConfig
from control_plane.api.openapi import build_openapi
from control_plane.api.routes_system import package_version
from control_plane.api.security import BearerBackend
from control_plane.composition import build_services
from control_plane.metrics import Metrics, RegionCollector
from control_plane.services.webhook_delivery import DeliveryPolicy
from control_plane.settings import Settings

__all__ = ["create_app", "routes"]

log = logging.getLogger(__name__)


_HOT_SUFFIXES = ("/infer", "/lease", "/complete", "/heartbeat")
# the durable job path: submit (and the batch), the long poll of a job
_HOT_PATHS = ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{job_id}")
_PATHED = (Route, WebSocketRoute, Mount)


def routes() -> list[BaseRoute]:
    """The route table of the API, the request path's routes first: Starlette tries routes in
    order, and an inference call should not be matched against fifty others first (the hot
    routes keep their relative order, and no other route matches a hot route's path, so the
    order changes nothing else)."""
    table = _all_routes()
    hot = [
        r
        for r in table
        if isinstance(r, _PATHED) and (r.path.endswith(_HOT_SUFFIXES) or r.path in _HOT_PATHS)
    ]
    return hot + [r for r in table if r not in hot]


def _all_routes() -> list[BaseRoute]:
    return [
        *routes_system.ROUTES,
        *routes_auth.ROUTES,
        *routes_jobs.ROUTES,
        *routes_models.ROUTES,
        *routes_runners.ROUTES,
        *webhook_routes.ROUTES,
        *routes_payloads.ROUTES,
        *kserve.ROUTES,
        *routes_blobs.ROUTES,
        *routes_channel.ROUTES,
        *routes_infer.ROUTES,
        *routes_pools.ROUTES,
        *routes_streams.ROUTES,
        *routes_direct.ROUTES,
        *routes_quotas.ROUTES,
        *routes_region_defaults.ROUTES,
        *routes_docs.ROUTES,
    ]


async def sweep_forever(jobs: JobsPort, interval_s: float) -> None:
    """Call ``jobs.sweep()`` every interval; errors are logged and backed off (with jitter)."""
    delay = interval_s
    while True:
        await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
        try:
            swept = await run_in_threadpool(jobs.sweep)
        except asyncio.CancelledError:
            raise
        except Exception:
            delay = min(delay * 2, max(interval_s, 60.0))
            log.warning("sweep failed; next try in ~%.1fs", delay, exc_info=True)
            continue
        delay = interval_s
        if any(swept.values()):
            log.info("swept %s", swept)


def create_app(settings: Settings, services: Services | None = None) -> Starlette:
    """The Starlette app of one control-plane process."""
    svc = services if services is not None else build_services(settings)  # composition root
    metrics = Metrics(svc.jobs.queue_depths, svc.runners.records)
    if svc.quotas is not None:  # queued/running per tenant
        metrics.add_tenant_loads(svc.quotas.loads)
    if svc.regions is not None:
        metrics.registry.register(
            RegionCollector(svc.regions.live_regions, svc.regions.measured_rtt_ms)
        )
    bus = svc.transitions
    if bus is not None:  # the jobs service reports transitions: count terminal ones
        if svc.regions is not None:
            bus.on_region_lease(metrics.observe_region_lease)
        bus.on_record(metrics.observe_record)
    if svc.capacity is not None:
        metrics.registry.register(svc.capacity)
    if svc.dispatch is not None:
        svc.dispatch.on_result.append(metrics.observe_dispatch)
        svc.dispatch.on_timings.append(metrics.observe_runner_stages)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(sweep_forever(svc.jobs, settings.sweep_interval_s))]
        if svc.webhooks is not None:
            worker = svc.webhooks.worker(DeliveryPolicy.from_settings(settings))
            tasks.append(asyncio.create_task(worker.run_forever()))
        if svc.rollups is not None:
            rollups = svc.rollups.run_forever(svc.runners.records, svc.jobs.queue_depths)
            tasks.append(asyncio.create_task(rollups))
        if svc.capacity is not None:
            tasks.append(asyncio.create_task(svc.capacity.run_forever()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics.flush_later()  # the observations of the last requests

    table = routes()
    app = ApiApp(
        routes=[*table, *console.routes()],
        gate=GateConfig(
            metrics=metrics,
            routes=lambda: table,
            backend=BearerBackend(svc.auth),
            max_body_bytes=settings.max_body_bytes,
            storage_budget_s=settings.storage_budget_s,
            exempt=("/v1/blobs/",),
        ),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.blobs = svc.stores.blobs if svc.stores is not None else None
    app.state.metrics = metrics
    app.state.count_completions = bus is None
    app.state.openapi = build_openapi(table, package_version())
    return app
