"""Building the capacity autoscaler (called by the composition root,
``control_plane.composition``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from control_plane.services.capacity.providers.base import Provider
from control_plane.services.capacity.service import CapacityService
from control_plane.settings import Settings
from control_plane.storage.protocols import JobRecord
from control_plane.storage.protocols_auth import RunnerStore
from control_plane.storage.stores import Stores

if TYPE_CHECKING:
    from control_plane.services.auth import AuthService
    from control_plane.services.jobs import JobService


def build_providers(settings: Settings, stores: Stores) -> dict[str, Provider]:
    """The providers the settings enable (clients are made on first use)."""
    out: dict[str, Provider] = {}
    enabled = {k.strip() for k in settings.capacity_providers.split(",") if k.strip()}

    def runner_url() -> str | None:
        return (
            settings.capacity_runner_url
            or settings.public_url
            or getattr(stores.blobs, "base_url", None)  # the embedded store knows its address
        )

    if "docker" in enabled:
        from control_plane.services.capacity.providers.docker import DockerProvider

        out["docker"] = DockerProvider(settings.capacity_docker_host, runner_url)
    if "aws-asg" in enabled:
        from control_plane.services.capacity.providers.aws_asg import AsgProvider

        out["aws-asg"] = AsgProvider(settings.aws_region, settings.capacity_aws_endpoint_url)
    return out


def model_memory(stores: Stores) -> dict[str, dict[str, int]]:
    """model -> GPU memory it needs in MB: by GPU type as placement measured it (the largest
    of its versions), and under "" as its deployment declares (``gpu_memory_mb``)."""
    out: dict[str, dict[str, int]] = {}
    plan = stores.deployments.get_plan()
    for e in plan.doc.get("memory", []) if plan else []:
        mine = out.setdefault(str(e["model"]), {})
        mine[str(e["gpu"])] = max(mine.get(str(e["gpu"]), 0), int(e["mb"]))
    for name, spec in stores.deployments.list_deployments().items():
        if spec.get("gpu_memory_mb"):
            out.setdefault(name, {})[""] = int(spec["gpu_memory_mb"])
    return out


def build_capacity_service(
    settings: Settings, stores: Stores, auth: AuthService, jobs: JobService
) -> CapacityService | None:
    """The autoscaler on ``stores`` (None when disabled or the store has no capacity table)."""
    if not settings.capacity_enabled or stores.capacity is None:
        return None
    runner_store = stores.runners

    def set_drain(runner_id: str, drain: bool) -> object:
        return runner_store.merge_config(runner_id, {"drain": drain})

    svc = CapacityService(
        stores.capacity,
        runner_store.list_runners,
        set_drain,
        jobs.queue_snapshot,
        jobs.queue_depths,
        build_providers(settings, stores),
        auth.issue_join_token,
        offline_after_s=settings.runner_offline_after_s,
        interval_s=settings.capacity_interval_s,
        drain_settle_s=settings.capacity_drain_settle_s,
        events_keep=settings.capacity_events_keep,
        pool_token_uses=settings.capacity_pool_token_uses,
        pool_token_ttl_s=settings.capacity_pool_token_ttl_s,
        deployment_pools=lambda: {
            name: str(spec["pool"])
            for name, spec in stores.deployments.list_deployments().items()
            if spec.get("pool")
        },
        model_memory=lambda: model_memory(stores),
    )
    return svc


def cold_host_of(runner_store: RunnerStore) -> Callable[[JobRecord], bool | None]:
    """The job service's ``cold_host`` question when pools start hosts."""
    registered: dict[str, float | None] = {}  # runner id -> registered_at if a pool's

    def cold_host(job: JobRecord) -> bool | None:
        """The job's runner was started by a pool and registered after the job came in
        (registrations never change: each runner is read once per process)."""
        if not job.runner_id:
            return None
        if job.runner_id not in registered:
            runner = runner_store.find_runner(job.runner_id)
            pooled = runner is not None and "gpufleet.pool" in runner.labels
            registered[job.runner_id] = runner.registered_at if runner and pooled else None
        at = registered[job.runner_id]
        return None if at is None else at > job.created_at

    return cold_host
