"""What the routes need: the services, as ports, and the settings.

``JobsPort`` and ``ModelsPort`` are the interfaces of ``services/jobs.py`` and
``services/models.py``; the composition root (``control_plane.composition``) fills them in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gpufleet.wire import (
    CommitRequest,
    CompleteItem,
    CompleteItemResult,
    CompleteRequest,
    CompleteResponse,
    CreateVersionRequest,
    CreateVersionResponse,
    DeploymentSpec,
    DeploymentView,
    ExtendResponse,
    JobList,
    JobLogs,
    JobRequest,
    JobView,
    LeaseRequest,
    LeaseResponse,
    ModelList,
    ModelVersionView,
    ModelView,
    Tensor,
)
from starlette.requests import Request

from control_plane.services.auth import AuthService
from control_plane.services.capacity.service import CapacityService
from control_plane.services.direct import DirectService
from control_plane.services.dispatch import Dispatcher
from control_plane.services.generate import GenerateService
from control_plane.services.inference import InferenceService
from control_plane.services.offload import Offload
from control_plane.services.principal import Principal
from control_plane.services.quotas import QuotaService
from control_plane.services.regions import RegionService
from control_plane.services.rollups import RollupService
from control_plane.services.runners import RunnerService
from control_plane.services.signing_keys import SigningKeys
from control_plane.services.streams import StreamService
from control_plane.services.transitions import TransitionBus
from control_plane.services.webhooks import WebhookService
from control_plane.settings import Settings
from control_plane.storage.protocols import JobRecord, ModelVersionRecord
from control_plane.storage.stores import Stores


class JobsPort(Protocol):
    """The job and queue service (owned by services/jobs.py)."""

    offload: Offload  # how its short store calls run from the event loop

    def submit(
        self, p: Principal, req: JobRequest, idempotency_key: str | None = None
    ) -> tuple[JobView, bool]: ...
    def submit_record(
        self, p: Principal, req: JobRequest, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]: ...
    def submit_batch(
        self, p: Principal, reqs: list[JobRequest], idempotency_key: str | None = None
    ) -> list[str]: ...
    def get(self, p: Principal, job_id: str) -> JobView: ...
    def inputs(self, p: Principal, job_id: str) -> list[Tensor]: ...
    async def wait(
        self,
        p: Principal,
        job_id: str,
        wait_s: float,
        *,
        known: JobView | JobRecord | None = None,
    ) -> JobView: ...
    def list_jobs(
        self, p: Principal, status: str | None, model: str | None, limit: int, cursor: str | None
    ) -> JobList: ...
    def cancel(self, p: Principal, job_id: str) -> JobView: ...
    def logs(self, p: Principal, job_id: str) -> JobLogs: ...
    async def lease(
        self, runner_id: str, region: str | None, req: LeaseRequest
    ) -> LeaseResponse: ...
    def extend(self, runner_id: str, job_id: str, lease_token: str) -> ExtendResponse: ...
    def complete(self, runner_id: str, job_id: str, req: CompleteRequest) -> CompleteResponse: ...
    def complete_batch(
        self, runner_id: str, items: list[CompleteItem]
    ) -> list[CompleteItemResult]: ...
    def cancelled_among(self, job_ids: list[str]) -> list[str]: ...
    def infer_target(
        self, p: Principal, req: JobRequest, *, cached_only: bool = False
    ) -> ModelVersionRecord | None: ...
    def with_regions(self, p: Principal, req: JobRequest) -> JobRequest: ...
    def sweep(self) -> dict[str, int]: ...
    def queue_depths(self) -> dict[str, int]: ...
    def ping(self) -> None: ...


class ModelsPort(Protocol):
    """The model repository service (owned by services/models.py)."""

    def create_version(
        self, p: Principal, name: str, req: CreateVersionRequest
    ) -> CreateVersionResponse: ...
    def commit(
        self, p: Principal, name: str, version: str, req: CommitRequest
    ) -> ModelVersionView: ...
    def list_models(self, p: Principal) -> ModelList: ...
    def get(self, p: Principal, name: str) -> ModelView: ...
    def delete_version(self, p: Principal, name: str, version: str) -> None: ...
    def release(self, p: Principal, name: str) -> None: ...


class DeploymentsPort(Protocol):
    """Deployment specs and placement (owned by services/deployments.py)."""

    def put(self, p: Principal, name: str, spec: DeploymentSpec) -> DeploymentView: ...
    def get(self, p: Principal, name: str) -> DeploymentView: ...


@dataclass
class Services:
    """Every service of one control-plane process, built once by the composition root."""

    settings: Settings
    auth: AuthService
    runners: RunnerService
    jobs: JobsPort
    models: ModelsPort
    checks: dict[str, Callable[[], None]] = field(default_factory=dict)
    webhooks: WebhookService | None = None
    deployments: DeploymentsPort | None = None
    dispatch: Dispatcher | None = None
    inference: InferenceService | None = None
    stores: Stores | None = None
    rollups: RollupService | None = None  # the console's charts
    capacity: CapacityService | None = None
    streams: StreamService | None = None  # streamed outputs of durable jobs
    generate: GenerateService | None = None  # /v2/models/{m}/generate_stream
    signing_keys: SigningKeys | None = None  # asymmetric keys: JWKS, tickets (direct mode)
    direct: DirectService | None = None  # direct-mode tickets
    regions: RegionService | None = None  # region policies, latency table (GET /v1/regions)
    # Job transitions (services/transitions.py); None: the routes count completions.
    transitions: TransitionBus | None = None
    quotas: QuotaService | None = None  # tenant quotas (their load counters feed /metrics)


def services(request: Request) -> Services:
    """The services of the app serving ``request``."""
    svc: Services = request.scope["app"].state.services
    return svc
