"""Composition root of the control plane: every service built once, here.

``build_services(settings, stores, now)`` is what the HTTP server (``control_plane.app``,
``control_plane.__main__``), the Lambda handler (``control_plane.lambda_handler``) and the
scripts (``scripts/create_admin_key.py``, through ``build_auth_service``) use. Collaborators
go to constructors; nothing is set on a built object afterwards. Transitions reach their
subscribers through one ``TransitionBus`` (services/transitions.py): quota counters,
webhooks, deployments (``job_queued``), rollups, then the metrics ``create_app`` adds.

A few services ask each other questions both ways (the job service asks placement why a job
waits; placement reads the job service's queue). Those questions are lambdas that name a
service built further down in ``build_services``: they are first called after it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from gpufleet.wire import JobRequest

from control_plane import clock
from control_plane.api.context import Services
from control_plane.errors import Unavailable
from control_plane.services import placement as pl
from control_plane.services.auth import AuthService
from control_plane.services.capacity.build import build_capacity_service, cold_host_of
from control_plane.services.deployments import DeploymentService
from control_plane.services.direct import DirectService
from control_plane.services.dispatch import Dispatcher
from control_plane.services.generate import GenerateService
from control_plane.services.inference import InferenceService
from control_plane.services.jobs import JobService
from control_plane.services.models import ModelService
from control_plane.services.offload import Offload
from control_plane.services.oidc import OidcVerifier, parse_role_map
from control_plane.services.placement_view import PlacementView
from control_plane.services.quotas import QuotaService
from control_plane.services.region_defaults import RegionDefaultsService
from control_plane.services.regions import RegionDefaults, RegionService, known_regions
from control_plane.services.rollups import RollupService
from control_plane.services.runners import RunnerService
from control_plane.services.signing_keys import SigningKeys
from control_plane.services.store_marker import StoreMarker
from control_plane.services.streams import StreamService
from control_plane.services.throttle import FailureThrottle
from control_plane.services.transitions import TransitionBus
from control_plane.services.wakeups import model_key
from control_plane.services.webhooks import WebhookService
from control_plane.settings import Settings
from control_plane.storage.health import bounded_checks
from control_plane.storage.protocols import JobRecord, ModelVersionRecord
from control_plane.storage.protocols_auth import AuthStore
from control_plane.storage.stores import Stores, build_stores

__all__ = [
    "Services",
    "build_auth_service",
    "build_job_service",
    "build_services",
    "build_signing_keys",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def build_services(
    settings: Settings,
    stores: Stores | None = None,
    now: Clock = clock.now,
    monotonic: Clock = time.monotonic,
) -> Services:
    """Every service on ``stores`` (default: the stores the settings name), built once; the
    job, auth, runner, deployment, webhook and stream services read the time from ``now``; the auth
    service's revocation-state cache ages by ``monotonic``."""
    st = stores if stores is not None else build_stores(settings)
    bus = TransitionBus()
    keys = build_signing_keys(settings, st)
    auth = build_auth_service(settings, st.auth, keys, now, monotonic)
    quotas = QuotaService(settings, st.limits, now=now)
    bus.on_record(quotas.job_transition)
    dispatch = (
        Dispatcher(
            queue_wait_s=settings.dispatch_queue_wait_s,
            max_waiters=settings.dispatch_max_waiters,
        )
        if settings.dispatch_enabled
        else None
    )
    regions = RegionService(
        default_spill_s=settings.region_spill_after_s,
        control_plane_region=settings.control_plane_region,
        tenant_defaults={
            tenant: RegionDefaults(t.default_region, tuple(t.regions_allowed))
            for tenant, t in settings.tenant_regions.items()
        },
        list_runners=st.runners.list_runners,
        offline_after_s=settings.runner_offline_after_s,
        deployment_defaults=lambda name: deployments.region_defaults(name),
        callers=RegionDefaultsService(
            st.limits,
            {
                tenant: RegionDefaults(t.default_region, tuple(t.regions_allowed))
                for tenant, t in settings.tenant_regions.items()
            },
            find_key=st.auth.find_api_key,
            known_regions=lambda: known_regions(settings, st),
        ),
    )
    with_pools = settings.capacity_enabled and st.capacity is not None

    def waiting_reason(job: JobRecord) -> str | None:
        """A pool starting a host for the job's model says so first; placement otherwise."""
        if capacity is not None:
            return capacity.waiting_reason(job) or deployments.waiting_reason(job)
        return deployments.waiting_reason(job)

    def copy_to_regions(rec: ModelVersionRecord) -> None:
        deployments.copies.copy_version(rec.name, rec.version, rec.files)

    models = build_model_service(
        settings,
        st,
        now,
        loaded_on=lambda name: deployments.loaded_on(name),
        after_ready=(copy_to_regions,),
        after_delete=(lambda name, v: deployments.copies.delete_version(name, v),),
    )
    jobs, _ = build_job_service(
        settings,
        st,
        now,
        models,
        transitions=bus,
        quotas=quotas,
        request_checks=(lambda req: webhooks.validate_request(req),),
        placement=PlacementView(
            waiting_reason=waiting_reason,
            cold_host=cold_host_of(st.runners) if with_pools else None,
            lease_offers=lambda runner_id, offers: deployments.lease_offers(runner_id, offers),
            runner_usable=lambda runner_id: runners.usable(runner_id),
        ),
        regions=regions,
    )

    def newly_ready(runner_id: str, names: list[str]) -> None:
        for name in names:  # leases held back until that heartbeat look again
            jobs.wakeups.notify(model_key(name))
        jobs.runner_readied(runner_id)

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
        desired_models=lambda runner: deployments.desired_models(runner),
        observe_rtt=regions.observe_rtt,
        region_rtt=regions.measured_rtt_ms,
        models_of=lambda tenant: {n for n, t in st.models.list_names() if t == tenant},
        jobs_of=lambda tenant, ids: [
            i for i, rec in st.jobs.jobs.get_jobs(ids).items() if rec.tenant == tenant
        ],
        on_ready=(newly_ready,),
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
    bus.on_record(webhooks.job_record_transition)
    capacity_store = st.capacity
    deployments = DeploymentService(
        st.deployments,
        st.models,  # its versions (both backends: the same store object as st.deployments)
        models,
        st.blobs,
        st.runners.list_runners,
        st.runners.find_runner,
        jobs.queue_snapshot,
        presign_ttl_s=settings.presign_ttl_s,
        offline_after_s=settings.runner_offline_after_s,
        interval_s=settings.placement_interval_s,
        policy=pl.Policy(
            scale_up_wait_s=settings.scale_up_wait_s,
            scale_down_idle_s=settings.scale_down_idle_s,
            cooldown_s=settings.scale_cooldown_s,
        ),
        # runners connected here heartbeat at once after a change
        on_change=(dispatch.wake_all,) if dispatch is not None else (),
        allow_mock_runners=settings.allow_mock_runners,
        now=now,
        pool_exists=(
            (lambda name: capacity_store.get_pool(name) is not None)
            if capacity_store is not None
            else None
        ),
    )
    bus.on_record(
        lambda rec, _view, previous: (
            deployments.job_queued(rec.model)
            if previous is None and rec.status == "QUEUED"
            else None
        )
    )
    inference = InferenceService(jobs, dispatch, settings, st.blobs, regions=regions)
    streams = (
        StreamService(settings, st.streams, jobs, jobs.wakeups, jobs.offload, now=now)
        if st.streams is not None
        else None
    )
    rollups = None
    if st.rollups is not None:
        rollups = RollupService(st.rollups, flush_interval_s=settings.rollup_flush_interval_s)
        bus.on_record(rollups.job_transition)
    capacity = build_capacity_service(settings, st, auth, jobs)
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
        "nonces": st.nonces.ping,
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
        capacity=capacity,
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
        transitions=bus,
        quotas=quotas,
    )


def build_model_service(
    settings: Settings,
    st: Stores,
    now: Clock = clock.now,
    *,
    loaded_on: Callable[[str], dict[str, list[str]]] | None = None,
    after_ready: Sequence[Callable[[ModelVersionRecord], None]] = (),
    after_delete: Sequence[Callable[[str, str], None]] = (),
) -> ModelService:
    """The model service on ``st`` (implicit deployments through the deployment store)."""
    return ModelService(
        settings,
        st.models,
        st.blobs,
        deployments=st.deployments,
        now=now,
        loaded_on=loaded_on,
        after_ready=after_ready,
        after_delete=after_delete,
    )


def build_job_service(
    settings: Settings,
    st: Stores,
    now: Clock = clock.now,
    models: ModelService | None = None,
    *,
    transitions: TransitionBus | None = None,
    quotas: QuotaService | None = None,
    request_checks: Sequence[Callable[[JobRequest], None]] = (),
    placement: PlacementView = PlacementView(),
    regions: RegionService | None = None,
) -> tuple[JobService, ModelService]:
    """The job service (and the model service it reads, built here unless given) on ``st``;
    alone (no placement, no webhooks) unless the collaborators are given."""
    models = models if models is not None else build_model_service(settings, st, now)
    jobs = JobService(
        settings,
        st.jobs,
        models,
        st.blobs,
        Offload(inline=st.kind == "sqlite"),
        st.limits,
        now,
        transitions=transitions,
        quotas=quotas,
        request_checks=request_checks,
        placement=placement,
        regions=regions,
    )
    return jobs, models


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


def build_oidc(settings: Settings) -> OidcVerifier | None:
    """The OIDC verifier the settings configure (None: no OIDC issuer)."""
    if not settings.oidc_issuer:
        return None
    return OidcVerifier(
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


def build_auth_service(
    settings: Settings,
    store: AuthStore,
    keys: SigningKeys | None,
    now: Clock = clock.now,
    monotonic: Clock = time.monotonic,
) -> AuthService:
    """The auth service on ``store``: the server's, and the bootstrap script's
    (``scripts/create_admin_key.py``, which passes no signing keys: it only stores a key)."""
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    return AuthService(
        store,
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
        oidc=build_oidc(settings),
        now=now,
        monotonic=monotonic,
    )
