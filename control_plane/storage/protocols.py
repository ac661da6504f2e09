"""Records and store protocols of the job queue and the model repository.

Services depend only on these protocols; the DynamoDB adapters live in ``dynamo_jobs.py``
(job items), ``dynamo_queue.py`` (queue entries, lease/TTL markers, depth counters),
``dynamo_idempotency.py`` and ``dynamo_models.py``; the S3 adapter in ``blobs.py``.

The job item is the single source of truth. Queue entries and markers are indexes that may be
stale for a moment (or after a crash between two writes); every reader checks them against the
job item with a conditional write, so a stale index entry can cost a wasted read, never a
double claim or a lost job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class JobRecord:
    """One job as stored in the ``jobs`` table."""

    id: str
    tenant: str
    model: str
    model_version: str | None
    pinned: bool
    status: str
    priority: int
    created_at: float
    timeout_s: int
    ttl_s: int
    max_attempts: int
    region: str | None
    request: dict[str, Any]  # inputs, outputs, parameters, webhook, tags
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    runner_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    lease_key: tuple[str, str] | None = None  # (shard, sk) of the lease marker
    queue_key: tuple[str, str] | None = None  # (shard, sk) of the queue entry
    queue_token: str | None = None  # token of the current queue entry
    outputs: list[dict[str, Any]] | None = None
    outputs_ref: str | None = None
    error: dict[str, Any] | None = None
    run_ms: int | None = None

    @property
    def deadline(self) -> float | None:
        """End of the running attempt's time budget (``started_at + timeout_s``)."""
        return None if self.started_at is None else self.started_at + self.timeout_s

    @property
    def ttl_deadline(self) -> float:
        """Queued past this instant, the job times out."""
        return self.created_at + self.ttl_s


@dataclass(frozen=True)
class QueueEntry:
    """A claimable job in one queue shard. ``token`` must equal the job's ``queue_token``."""

    shard: str
    sk: str
    job_id: str
    version: str  # "" = any version
    region: str  # "" = any region
    ttl_deadline: float
    token: str
    timeout_s: int = 0

    @property
    def model(self) -> str:
        return self.shard.rsplit("#", 1)[0]

    @property
    def shard_number(self) -> int:
        return int(self.shard.rsplit("#", 1)[1])


@dataclass(frozen=True)
class Marker:
    """A lease-expiry or queue-TTL marker: ``(shard, sk)`` ordered by the instant it fires."""

    shard: str
    sk: str
    job_id: str
    token: str = ""


@dataclass(frozen=True)
class IdempotencyRecord:
    """What the first submit with a key stored: enough to rebuild the same job."""

    key: str
    body_hash: str
    job_id: str
    created_at: float
    shard: int
    queue_token: str
    expires_at: float


@dataclass
class ModelVersionRecord:
    """One version of a model in the ``models`` table."""

    name: str
    version: str
    tenant: str
    state: str
    created_at: float
    files: list[dict[str, Any]]
    uploads: dict[str, str] = field(default_factory=dict)  # path -> multipart upload id
    platform: str | None = None
    backend: str | None = None
    max_batch_size: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


class JobTable(Protocol):
    """Job items; every change is conditional on the job's current status and token."""

    def create_job(self, job: JobRecord) -> bool: ...
    def create_jobs(self, jobs: list[JobRecord]) -> None: ...
    def get_job(self, job_id: str) -> JobRecord | None: ...
    def get_jobs(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """id -> record of the jobs among ``job_ids`` that exist (strongly consistent, as
        ``get_job``; any number of ids, repeats allowed; the adapter pages the reads)."""
        ...

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work over the job, queue and idempotency stores, for this thread.

        Where the backend has multi-item transactions (the embedded SQLite store) every write
        made through these stores inside the block commits together, or not at all when the
        block raises; reads inside see the block's own writes. Where it has none (DynamoDB)
        each call commits on its own, in order, and nothing is undone. Callers order their
        writes so that every prefix is safe in both cases (see ``services/queue_ops.py``),
        and write nothing else inside the block (hooks run after it). Blocks may nest.
        """
        ...

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]: ...
    def list_jobs(
        self,
        tenant: str | None,
        status: str | None,
        model: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[JobRecord], str | None]: ...
    def claim_job(
        self,
        job_id: str,
        queue_token: str,
        *,
        lease_token: str,
        runner_id: str,
        version: str,
        now: float,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None: ...
    def extend_lease(
        self,
        job_id: str,
        lease_token: str,
        runner_id: str,
        lease_expires_at: float,
        lease_key: tuple[str, str],
    ) -> JobRecord | None: ...
    def finish_running(
        self,
        job_id: str,
        lease_token: str,
        status: str,
        *,
        now: float,
        outputs_json: str | None = None,
        outputs_ref: str | None = None,
        error: dict[str, Any] | None = None,
        run_ms: int | None = None,
        expired_before: float | None = None,
    ) -> JobRecord | None: ...
    def requeue_running(
        self,
        job_id: str,
        lease_token: str,
        queue_key: tuple[str, str],
        queue_token: str,
        *,
        expired_before: float,
    ) -> bool: ...
    def finish_queued(
        self,
        job_id: str,
        queue_token: str,
        status: str,
        *,
        now: float,
        error: dict[str, Any] | None = None,
    ) -> JobRecord | None: ...
    def ping(self) -> None: ...


class QueueStore(Protocol):
    """Queue entries, lease-expiry and TTL markers, per-model depth counters."""

    def enqueue(self, entry: QueueEntry) -> bool: ...
    def enqueue_many(self, entries: list[QueueEntry]) -> None: ...
    def head(self, shard: str, limit: int, after_sk: str | None = None) -> list[QueueEntry]: ...
    def remove_entry(self, shard: str, sk: str, token: str) -> None: ...
    def put_marker(self, marker: Marker) -> None: ...
    def put_markers(self, markers: list[Marker]) -> None: ...
    def delete_marker(self, shard: str, sk: str) -> None: ...
    def delete_markers(self, keys: list[tuple[str, str]]) -> None:
        """Unconditional deletes of the markers ``(shard, sk)`` (absent ones and repeats are
        fine), batched by the adapter."""
        ...

    def due_markers(
        self, shard: str, before_sk: str, limit: int, after_sk: str | None = None
    ) -> list[Marker]: ...
    def add_depth(self, model: str, shard: int, delta: int) -> None: ...
    def depth(self, model: str) -> int: ...
    def all_depths(self) -> dict[str, int]: ...
    def ping(self) -> None: ...


class IdempotencyStore(Protocol):
    """``Idempotency-Key`` records (24 h)."""

    def claim_key(self, rec: IdempotencyRecord, now: float) -> IdempotencyRecord | None: ...


class ModelStore(Protocol):
    """Model ownership and versions."""

    def claim_name(self, name: str, tenant: str, now: float) -> str: ...
    def owner(self, name: str) -> str | None: ...
    def put_version(self, rec: ModelVersionRecord) -> bool: ...
    def get_version(self, name: str, version: str) -> ModelVersionRecord | None: ...
    def list_versions(self, name: str) -> list[ModelVersionRecord]: ...
    def mark_ready(self, rec: ModelVersionRecord) -> bool: ...
    def delete_version(self, name: str, version: str) -> bool: ...
    def list_names(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True)
class PlanRecord:
    """The stored placement decision: a JSON document, fenced by ``revision``."""

    revision: int
    planned_at: float
    doc: dict[str, Any]


class DeploymentStore(Protocol):
    """Deployment specs per model and the one placement decision of the fleet."""

    def put_deployment(self, name: str, spec: dict[str, Any], now: float) -> None: ...
    def get_deployment(self, name: str) -> dict[str, Any] | None: ...
    def list_deployments(self) -> dict[str, dict[str, Any]]: ...
    def get_plan(self) -> PlanRecord | None: ...
    def save_plan(self, doc: dict[str, Any], planned_at: float, expected_revision: int) -> bool: ...


@dataclass(frozen=True)
class JobStore:
    """The three stores behind the job service (job items, queue indexes, idempotency)."""

    jobs: JobTable
    queue: QueueStore
    idempotency: IdempotencyStore

    def atomic(self) -> AbstractContextManager[None]:
        """A unit of work over the three stores (see ``JobTable.atomic``)."""
        return self.jobs.atomic()


class BlobStore(Protocol):
    """The bucket: presigned uploads/downloads, hashes, JSON documents."""

    def presign_put(self, key: str, ttl_s: int) -> str: ...
    def presign_get(self, key: str, ttl_s: int) -> str: ...
    def head(self, key: str) -> int | None: ...
    def sha256_of(self, key: str) -> str | None: ...
    def put_json(self, key: str, doc: Any) -> None: ...
    def get_json(self, key: str) -> Any: ...
    def get_bytes(self, key: str, limit: int = ...) -> bytes: ...
    def create_multipart(self, key: str) -> str: ...
    def presign_upload_part(self, key: str, upload_id: str, number: int, ttl_s: int) -> str: ...
    def complete_multipart(self, key: str, upload_id: str, etags: list[str]) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def ping(self) -> None: ...
