"""Composition root: ``build_services(settings)`` wires stores and services once;
``create_app(settings, services)`` builds the Starlette app around them.

Middleware, outermost first: request timing (metrics), body limit (413), the request's
storage-time budget (``storage/budget.py``), the KServe HTTP infer short path
(``api/kserve_fast.py``), bearer authentication; then Starlette's
exception middleware with the one error handler.
The lifespan runs the expiry sweeper (``jobs.sweep()`` every ``sweep_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import BaseRoute

from control_plane import clock
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
from control_plane.api.kserve_fast import KServeFastPath
from control_plane.api.limits import BodyLimitMiddleware
from control_plane.api.openapi import build_openapi
from control_plane.api.request_id import RequestIdMiddleware
from control_plane.api.routes_system import package_version
from control_plane.api.security import BearerBackend
from control_plane.errors import Unavailable
from control_plane.metrics import Metrics, RegionCollector, RequestTimer
from control_plane.services.auth import AuthService
from control_plane.services.direct import DirectService
from control_plane.services.dispatch import Dispatcher
from control_plane.services.generate import GenerateService
from control_plane.services.inference import InferenceService
from control_plane.services.oidc import OidcVerifier, parse_role_map
from control_plane.services.rollups import RollupService
from control_plane.services.runners import RunnerService
from control_plane.services.signing_keys import SigningKeys
from control_plane.services.store_marker import StoreMarker
from control_plane.services.streams import StreamService
from control_plane.services.throttle import FailureThrottle
from control_plane.services.wakeups import model_key
from control_plane.services.webhook_delivery import DeliveryPolicy
from control_plane.services.webhooks import WebhookService
from control_plane.settings import Settings
from control_plane.storage.budget import StorageBudgetMiddleware
from control_plane.storage.health import bounded_checks
from control_plane.storage.stores import Stores, build_stores

__all__ = ["Services", "build_services", "create_app", "routes"]

log = logging.getLogger(__name__)


def build_services(
    settings: Settings, stores: Stores | None = None, now: Callable[[], float] = clock.now
) -> Services:
    """Every service on ``stores`` (default: the stores the settings name), built once; the
    job, auth, runner, webhook and stream services read the time from ``now``."""
    from control_plane.services.capacity.build import build_capacity_service
    from control_plane.services.deployments import build_deployment_service
    from control_plane.services.jobs import build_job_service
    from control_plane.services.regions import wire_regions

    st = stores if stores is not None else build_stores(settings)
    jobs, models = build_job_service(settings, st, now)
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    keys = build_signing_keys(settings, st)
    oidc = None
    if settings.oidc_issuer:
        oidc = OidcVerifier(
            settings.oidc_issuer,
            settings.oidc_audience,
            settings.oidc_jwks_url,
            tenant_claim=settings.oidc_tenant_claim,
            role_claim=settings.oidc_role_claim,
            role_map=parse_role_map(settings.oidc_role_map),
            default_role=settings.oidc_default_role or None,
            algorithms=[a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()],
            max_lifetime_s=settings.max_token_lifetime_s,
            jwks_cache_s=settings.oidc_jwks_cache_s,
            jwks_refresh_s=settings.oidc_jwks_refresh_s,
        )
    auth = AuthService(
        st.auth,
        jwt_secret=secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
        api_key_cache_s=settings.api_key_cache_s,
        signing_keys=None if settings.access_token_algorithm == "HS256" else keys,  # noqa: S105
        revocation_check_s=settings.revocation_check_s,
        max_token_lifetime_s=settings.max_token_lifetime_s,
        key_throttle=FailureThrottle(
            settings.auth_failures_per_key, settings.auth_failure_window_s
        ),
        address_throttle=FailureThrottle(
            settings.auth_failures_per_address, settings.auth_failure_window_s
        ),
        oidc=oidc,
        now=now,
    )
    runners = RunnerService(
        st.runners,
        st.nonces,
        auth.redeem_join_token,
        jobs.cancelled_among,
        window_s=settings.runner_signature_window_s,
        offline_after_s=settings.runner_offline_after_s,
        rotation_s=settings.runner_secret_rotation_s,
        overlap_s=settings.runner_secret_overlap_s,
        now=now,
    )
    webhooks = WebhookService(
        st.webhooks,
        st.webhook_secrets,
        jobs.get,
        record_of=st.jobs.jobs.get_job,
        allow_loopback=settings.webhooks_allow_loopback,
        grace_s=settings.webhook_secret_grace_s,
        shards=settings.webhook_shards,
        clock=now,
    )
    jobs.request_checks.append(webhooks.validate_request)
    jobs.runner_usable = runners.usable
    runners.models_of = lambda tenant: {n for n, t in st.models.list_names() if t == tenant}
    runners.jobs_of = lambda tenant, ids: [
        i for i, rec in st.jobs.jobs.get_jobs(ids).items() if rec.tenant == tenant
    ]
    deployments = build_deployment_service(settings, st, models, runners, jobs)
    regions = wire_regions(settings, st, runners, jobs, deployments)
    jobs.on_record_transition.append(webhooks.job_record_transition)
    dispatch = (
        Dispatcher(
            queue_wait_s=settings.dispatch_queue_wait_s,
            max_waiters=settings.dispatch_max_waiters,
        )
        if settings.dispatch_enabled
        else None
    )
    inference = InferenceService(jobs, dispatch, settings, st.blobs)
    streams = (
        StreamService(settings, st.streams, jobs, jobs.wakeups, jobs.offload, now=now)
        if st.streams is not None
        else None
    )

    def _newly_ready(runner_id: str, names: list[str]) -> None:
        for name in names:  # leases held back until that heartbeat look again
            jobs.wakeups.notify(model_key(name))
        jobs.runner_readied(runner_id)

    runners.on_ready.append(_newly_ready)
    if dispatch is not None:  # runners connected here heartbeat at once after a change
        deployments.on_change.append(dispatch.wake_all)
    jobs.on_record_transition.append(
        lambda rec, _view, previous: (
            deployments.job_queued(rec.model)
            if previous is None and rec.status == "QUEUED"
            else None
        )
    )
    rollups = None
    if st.rollups is not None:
        rollups = RollupService(st.rollups, flush_interval_s=settings.rollup_flush_interval_s)
        jobs.on_record_transition.append(rollups.job_transition)
    marker = StoreMarker(st.auth)
    try:
        marker.adopt()
    except Unavailable as exc:
        log.warning("store marker not read at start (%s): the first health check reads it", exc)
    pings = {
        "store": marker.check,
        "jobs": jobs.ping,
        "auth": auth.ping,
        "runners": runners.ping,
        "nonces": _ping_of(st.nonces),
        "webhooks": webhooks.ping,
    }
    checks = bounded_checks(pings, settings.health_timeout_s)
    return Services(
        settings,
        auth,
        runners,
        jobs,
        models,
        checks,
        webhooks,
        deployments,
        dispatch=dispatch,
        inference=inference,
        stores=st,
        rollups=rollups,
        capacity=build_capacity_service(settings, st, auth, jobs),
        streams=streams,
        generate=GenerateService(settings, jobs, dispatch, streams),
        signing_keys=keys,
        direct=DirectService(
            keys,
            jobs.ready_target,
            runners.records,
            runners.status_of,
            issuer=settings.jwt_issuer,
            ttl_s=settings.direct_ticket_ttl_s,
        ),
        regions=regions,
    )


def build_signing_keys(settings: Settings, st: Stores) -> SigningKeys:
    """The shared asymmetric keys (access tokens unless HS256, and direct-mode tickets)."""
    alg = settings.access_token_algorithm
    return SigningKeys(
        st.signing_keys,
        alg="EdDSA" if alg == "HS256" else alg,
        rotate_every_s=settings.signing_key_rotate_s,
        overlap_s=settings.signing_key_overlap_s,
        cache_s=settings.signing_key_cache_s,
    )


def _ping_of(store: object) -> Callable[[], None]:
    ping = getattr(store, "ping", None)
    return ping if callable(ping) else (lambda: None)


_HOT_SUFFIXES = ("/infer", "/lease", "/complete", "/heartbeat")


def routes() -> list[BaseRoute]:
    """The route table of the API, the request path's routes first: Starlette tries routes in
    order, and an inference call should not be matched against fifty others first (no two
    routes here match the same path, so the order changes nothing else)."""
    table = _all_routes()
    hot = [r for r in table if str(getattr(r, "path", "")).endswith(_HOT_SUFFIXES)]
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
    svc = services if services is not None else build_services(settings)
    metrics = Metrics(svc.jobs.queue_depths, svc.runners.records)
    quotas = getattr(svc.jobs, "quotas", None)
    if quotas is not None:  # queued/running per tenant
        metrics.add_tenant_loads(quotas.loads)
    if svc.regions is not None:
        metrics.registry.register(
            RegionCollector(svc.regions.live_regions, svc.regions.measured_rtt_ms)
        )
        region_hooks = getattr(svc.jobs, "on_region_lease", None)
        if isinstance(region_hooks, list):
            region_hooks.append(metrics.observe_region_lease)
    hooks = getattr(svc.jobs, "on_record_transition", None)
    if isinstance(hooks, list):  # the jobs service reports transitions: count terminal ones
        hooks.append(lambda rec, _view, previous: metrics.observe_transition(rec, previous))
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

    table = routes()
    app = Starlette(
        routes=[*table, *console.routes()],
        middleware=[
            Middleware(RequestIdMiddleware),
            Middleware(RequestTimer, metrics=metrics, routes=lambda: table),
            Middleware(
                BodyLimitMiddleware, max_bytes=settings.max_body_bytes, exempt=("/v1/blobs/",)
            ),
            Middleware(StorageBudgetMiddleware, limit_s=settings.storage_budget_s),
            Middleware(KServeFastPath),  # KServe HTTP infer of a known token: no router
            Middleware(AuthenticationMiddleware, backend=BearerBackend(svc.auth)),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.services = svc
    app.state.blobs = svc.stores.blobs if svc.stores is not None else None
    app.state.metrics = metrics
    app.state.count_completions = not isinstance(hooks, list)
    app.state.openapi = build_openapi(table, package_version())
    return app
