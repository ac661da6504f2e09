"""The job service: submit (idempotent), read, wait, list, cancel; the runner's lease protocol
(lease, extend, complete); expiry sweep; queue depths.

States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMED_OUT (terminal never
changes). The lease token is a fencing token: extend and complete are conditional on it, so a
runner whose lease expired and was re-leased gets ``StaleLease`` (409) and the result is
committed exactly once. ``complete_batch`` applies the same check to each result on its own
(one stale token refuses that result only). Long polls (``wait``, ``lease``) re-read the
tables, so they work the same across replicas; concurrent waits share their reads (one
``get_jobs`` call for every job read while the previous read ran).

Batches: a batch submit, the claims of one lease and a batch complete each go through the
store's batch calls (see ``queue_ops.py``): a few calls per batch instead of a few per job.

Backpressure: the queue depth of a model is the sum of per-shard counters
(``QueueStore.add_depth``, by whoever wins a transition), read with one small read per submit.

Hooks, called after each transition this replica commits: ``on_record_transition``,
callables ``(JobRecord, view, previous_status | None)`` where ``view()`` builds the wire view
only when a hook needs it (webhooks of jobs that have one; counters read the record), and
``on_transition``, callables ``(JobView, previous_status | None)`` (the view is built).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import itertools
import json
import logging
import random
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gpufleet.wire import (
    MAX_JOB_LOG_CHARS,
    TERMINAL_STATUSES,
    CompleteItem,
    CompleteItemResult,
    CompleteRequest,
    CompleteResponse,
    ErrorInfo,
    ExtendResponse,
    JobList,
    JobLogs,
    JobRequest,
    JobView,
    LeasedJob,
    LeaseRequest,
    LeaseResponse,
    Tensor,
)

from control_plane import clock
from control_plane.clock import iso, new_id
from control_plane.errors import (
    Conflict,
    Forbidden,
    GpufleetError,
    InvalidRequest,
    NotFound,
    RateLimited,
    StaleLease,
    Unavailable,
)
from control_plane.services.fair_share import FairShare
from control_plane.services.job_views import body_hash, job_view, leased_job, new_job
from control_plane.services.models import ModelService
from control_plane.services.offload import Offload
from control_plane.services.payloads import PayloadService
from control_plane.services.placement import QueueSnapshot
from control_plane.services.placement_view import PlacementView
from control_plane.services.principal import Principal
from control_plane.services.queue_heads import QueueHeads
from control_plane.services.queue_ops import Finish, QueueOps, new_token
from control_plane.services.quotas import QuotaService
from control_plane.services.regions import RegionPolicy, RegionService, static_region_fits
from control_plane.services.sweeper import Sweeper
from control_plane.services.tensors import validate_tensors
from control_plane.services.transitions import TransitionBus
from control_plane.services.wakeups import (
    Wakeups,
    job_key,
    model_key,
    runner_key,
    sleep_or_wake,
)
from control_plane.settings import Settings
from control_plane.storage import budget as storage_budget
from control_plane.storage.definitions import RESULTS_PREFIX
from control_plane.storage.protocols import (
    BlobStore,
    IdempotencyRecord,
    JobRecord,
    JobServiceStores,
    ModelVersionRecord,
    QueueEntry,
)
from control_plane.storage.protocols_limits import LimitsStore

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 24 * 3600
# A keyed batch replayed with jobs missing this soon after its first submit waits (503) rather
# than write them: the first request may still be writing them (its storage calls are bounded
# by the storage deadlines, far below this).
BATCH_REPLAY_GRACE_S = 60.0
MAX_LIST = 100
CLAIM_ROUNDS = 5
MODEL_CACHE_S = 2.0  # how long a replica trusts a model's READY version at submit
DEPTH_CACHE_S = 1.0  # how long a replica trusts a queue depth it read (while far from full)

MAX_READ_BATCH = 100  # job ids per shared read of concurrent waits

Transition = Callable[[JobView, "str | None"], None]
RecordTransition = Callable[[JobRecord, Callable[[], JobView], "str | None"], None]
Completion = CompleteRequest | CompleteItem
# What a result comes to before its commit: a write to make, an answer already known (a retry
# of a committed result), or the refusal (NotFound, StaleLease, InvalidRequest).
Prepared = Finish | CompleteResponse | GpufleetError


# Logs this short stay in the job record (``run_info``) instead of a bucket object: one
# write fewer per job on the commit path (a blob write with fsync cost ~25% of the control
# plane's CPU per job in bench_runner). Longer ones go to the bucket as before.
INLINE_LOG_CHARS = 2048


@dataclass
class _Reads:
    """The job reads waiting in one event loop, and the task serving them."""

    waiting: dict[str, builtins.list[asyncio.Future[JobRecord | None]]] = field(
        default_factory=dict
    )
    task: asyncio.Task[None] | None = None


class SharedReads:
    """Concurrent reads of single jobs, served together: while one ``get_jobs`` call runs,
    the ids asked for meanwhile wait for the next (up to ``MAX_READ_BATCH`` per call), so a
    thousand long polls re-reading their jobs cost a few calls, not a thousand."""

    def __init__(
        self,
        read_many: Callable[[builtins.list[str]], dict[str, JobRecord]],
        offload: Offload | None = None,
    ) -> None:
        self._read_many = read_many
        self._offload = offload or Offload()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reads] = (
            weakref.WeakKeyDictionary()
        )

    async def get(self, job_id: str) -> JobRecord | None:
        loop = asyncio.get_running_loop()
        reads = self._loops.get(loop)
        if reads is None:
            reads = self._loops[loop] = _Reads()
        fut: asyncio.Future[JobRecord | None] = loop.create_future()
        reads.waiting.setdefault(job_id, []).append(fut)
        if reads.task is None:
            reads.task = loop.create_task(self._serve(reads))
        return await fut

    async def _serve(self, reads: _Reads) -> None:
        storage_budget.clear()  # serves many requests: none's budget (this task's own context)
        batch: dict[str, builtins.list[asyncio.Future[JobRecord | None]]] = {}
        try:
            while reads.waiting:
                ids = list(itertools.islice(reads.waiting, MAX_READ_BATCH))
                batch = {i: reads.waiting.pop(i) for i in ids}
                try:
                    found = await self._offload(self._read_many, ids)
                except Exception as exc:
                    for fut in itertools.chain.from_iterable(batch.values()):
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for job_id, futs in batch.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(found.get(job_id))
        finally:
            reads.task = None
            for fut in itertools.chain(*batch.values(), *reads.waiting.values()):
                fut.cancel()  # only when this task was cancelled (the loop is closing)


class JobService:
    """Jobs and the queue on the tables; no state of its own between calls."""

    def __init__(
        self,
        settings: Settings,
        store: JobServiceStores,
        models: ModelService,
        blobs: BlobStore,
        offload: Offload | None = None,
        limits: LimitsStore | None = None,
        now: Callable[[], float] = clock.now,
        *,
        transitions: TransitionBus | None = None,
        quotas: QuotaService | None = None,
        request_checks: Sequence[Callable[[JobRequest], None]] = (),
        placement: PlacementView = PlacementView(),
        regions: RegionService | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._now = now
        # How the async edges run this service's short store calls (inline on SQLite).
        self.offload = offload or Offload()
        self._models = models
        self._blobs = blobs
        self.payloads = PayloadService(settings, blobs)  # POST /v1/payloads, lease URLs
        # Who hears of transitions (services/transitions.py): the bus's subscriber lists.
        self.transitions = transitions if transitions is not None else TransitionBus()
        self.on_transition = self.transitions.views
        self.on_record_transition = self.transitions.records
        self.on_region_lease = self.transitions.region_leases
        # Extra submit-time checks (the webhook target check); each raises InvalidRequest.
        self.request_checks = tuple(request_checks)
        # Placement, capacity and runners (services/placement_view.py).
        self.waiting_reason = placement.waiting_reason
        self.cold_host = placement.cold_host
        self.runner_usable = placement.runner_usable
        self.lease_offers = placement.lease_offers
        # Regions (services/regions.py): request defaults, the lease filter, waiting words.
        self.regions = regions
        self._ops = QueueOps(settings, store, self._transitioned)
        self._sweeper = Sweeper(settings, store, self._ops, self._transitioned, now)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lease-read")
        self._heads = QueueHeads(
            store.queue,
            self._pool,
            depth=settings.queue_read_depth,
            parallel=not self.offload.inline,
        )
        self._reads = SharedReads(store.jobs.get_jobs, self.offload)
        self.wakeups = Wakeups()
        self._ready_cache: dict[
            tuple[str, bool, str, str | None], tuple[float, int, ModelVersionRecord]
        ] = {}
        self._depth_cache: dict[str, tuple[float, int]] = {}
        # Tenant quotas (submit checks, load counters) and fair leasing across tenants; the
        # composition root builds them and subscribes their counters to the bus.
        if quotas is None:
            quotas = QuotaService(settings, limits, now=now)
            self.transitions.on_record(quotas.job_transition)
        self.quotas = quotas
        self._fair = FairShare(self.quotas.weight, self.quotas.running_room)
        self._readied: dict[str, int] = {}  # runner id -> heartbeats with a newly READY model

    # ------------------------------------------------------------------ views and hooks
    def view(self, job: JobRecord) -> JobView:
        """The wire view of a job (outputs inline, or a presigned ``outputs_url``)."""
        return job_view(job, self._blobs, self._settings.presign_ttl_s)

    def _transitioned(self, job: JobRecord, previous: str | None) -> None:
        self.wakeups.notify(job_key(job.id))
        if job.status == "QUEUED":
            self.wakeups.notify(model_key(job.model))
        if not self.on_transition and not self.on_record_transition:
            return
        built: list[JobView] = []

        def view() -> JobView:  # built once, and only when a hook asks for it
            if not built:
                built.append(self.view(job))
            return built[0]

        for record_callback in self.on_record_transition:
            try:
                record_callback(job, view, previous)
            except Exception:
                log.warning("on_record_transition callback failed", exc_info=True)
        if not self.on_transition:
            return
        view_now = view()
        for callback in self.on_transition:
            try:
                callback(view_now, previous)
            except Exception:
                log.warning("on_transition callback failed", exc_info=True)

    # ------------------------------------------------------------------ submit
    def _ready_record(self, p: Principal, model: str, version: str | None) -> ModelVersionRecord:
        """``ready_record``, cached per replica for ``MODEL_CACHE_S`` (submit is hot)."""
        key = (p.tenant, p.is_admin, model, version)
        t = time.monotonic()
        hit = self._ready_cache.get(key)
        if hit is not None and hit[1] == self._models.generation and t - hit[0] < MODEL_CACHE_S:
            return hit[2]
        generation = self._models.generation
        rec = self._models.ready_record(p, model, version)  # raises: nothing is cached
        if len(self._ready_cache) > 10_000:
            self._ready_cache.clear()
        self._ready_cache[key] = (t, generation, rec)
        return rec

    def _validate(
        self, p: Principal, req: JobRequest, cache: dict[tuple[str, str | None], Any]
    ) -> ModelVersionRecord:
        key = (req.model, req.model_version)
        if key not in cache:
            cache[key] = self._ready_record(p, req.model, req.model_version)
        rec: ModelVersionRecord = cache[key]
        for check in self.request_checks:
            check(req)
        validate_tensors(
            req.inputs,
            req.outputs,
            rec.inputs,
            rec.outputs,
            rec.max_batch_size,
            max_inline_bytes=self._settings.max_inline_bytes,
            check_payload=lambda i, t: self.payloads.check_input(p.tenant, i, t),
        )
        return rec

    def ready_target(
        self, p: Principal, model: str, version: str | None, *, cached_only: bool = False
    ) -> ModelVersionRecord | None:
        """The READY version a synchronous inference of ``model`` runs on (the pinned
        ``version``, else the newest), for a caller allowed to submit. ``cached_only``: None
        instead of a storage read when this replica has no fresh record (the caller then asks
        again off the event loop)."""
        p.require("jobs:write")
        hit = self._ready_cache.get((p.tenant, p.is_admin, model, version))
        if (
            hit is not None
            and hit[1] == self._models.generation
            and time.monotonic() - hit[0] < MODEL_CACHE_S
        ):
            return hit[2]
        if cached_only:
            return None
        return self._ready_record(p, model, version)

    def infer_target(
        self, p: Principal, req: JobRequest, *, cached_only: bool = False
    ) -> ModelVersionRecord | None:
        """The READY version a synchronous inference of ``req`` runs on, its tensors checked
        as a submit checks them. ``cached_only``: None instead of a storage read when this
        replica has no fresh record (the caller then asks again off the event loop)."""
        rec = self.ready_target(p, req.model, req.model_version, cached_only=cached_only)
        if rec is None:
            return None
        validate_tensors(
            req.inputs,
            req.outputs,
            rec.inputs,
            rec.outputs,
            rec.max_batch_size,
            max_inline_bytes=None,  # nothing is stored; the body limit bounds the request
            check_payload=lambda i, t: self.payloads.check_input(p.tenant, i, t),
        )
        return rec

    def with_regions(self, p: Principal, req: JobRequest) -> JobRequest:
        """``req`` with the tenant's and the deployment's region defaults and limits applied
        (InvalidRequest names a field outside them); unchanged without a region service."""
        if self.regions is None:
            return req
        return self.regions.resolve(p.tenant, req)

    def _check_depth(self, model: str, adding: int = 1) -> None:
        """429 when the queue of ``model`` is full. A depth read in the last ``DEPTH_CACHE_S``
        plus this replica's submits since is trusted while it stays under half the limit."""
        t = time.monotonic()
        limit = self._settings.max_queue_depth
        hit = self._depth_cache.get(model)
        if hit is not None and t - hit[0] < DEPTH_CACHE_S and hit[1] + adding <= limit // 2:
            self._depth_cache[model] = (hit[0], hit[1] + adding)
            return
        depth = self._store.queue.depth(model)
        if depth + adding > limit:
            self._depth_cache.pop(model, None)
            raise RateLimited(
                f"the queue of {model!r} is full ({depth} jobs waiting)", retry_after=5
            )
        self._depth_cache[model] = (t, depth + adding)

    def submit(
        self, p: Principal, req: JobRequest, idempotency_key: str | None = None
    ) -> tuple[JobView, bool]:
        """Validate and queue one job; with a key, a replay returns the first job (False)."""
        p.require("jobs:write")
        req = self.with_regions(p, req)
        self._validate(p, req, {})
        try:
            self.quotas.check_submit(p, [req.priority])
        except (RateLimited, Forbidden):
            stored = self._stored_replay(p, idempotency_key, body_hash(req))
            if stored is None:
                raise
            return self.view(stored[0]), False
        self._check_depth(req.model)
        created = self._now()
        job = new_job(p, req, new_id("job"), created)
        job.queue_token = new_token()
        shard = random.randrange(self._settings.queue_shards)
        if idempotency_key is None:
            self._ops.enqueue_new(job, shard)
            return self.view(job), True
        claim = IdempotencyRecord(
            key=f"{p.tenant}#{idempotency_key}",
            body_hash=body_hash(req),
            job_id=job.id,
            created_at=created,
            shard=shard,
            queue_token=job.queue_token,
            expires_at=created + IDEMPOTENCY_TTL_S,
        )
        held = self._store.idempotency.claim_key(claim, created)
        if held is None:
            self._ops.enqueue_new(job, shard)
            return self.view(job), True
        if held.body_hash != claim.body_hash:
            raise Conflict("this Idempotency-Key was used with a different request body")
        existing = self._store.jobs.get_job(held.job_id)
        if existing is None:  # the first submit has not written its job yet (or crashed)
            job = new_job(p, req, held.job_id, held.created_at)
            job.queue_token = held.queue_token
            self._ops.enqueue_new(job, held.shard)
            existing = self._store.jobs.get_job(held.job_id) or job
        return self.view(existing), False

    def submit_batch(
        self,
        p: Principal,
        reqs: builtins.list[JobRequest],
        idempotency_key: str | None = None,
    ) -> builtins.list[str]:
        """Validate every job first, then queue them all.

        Without a key, a write that fails cancels what was stored again. With a key, the
        batch's ids derive from a seed kept in the key's record: on the embedded store the
        record and every job commit in one transaction (all or nothing); on DynamoDB a replay
        finds the jobs a crash left unwritten and writes exactly those (each a conditional
        create), so every replay answers the same ids and the batch ends up whole, once.
        """
        p.require("jobs:write")
        cache: dict[tuple[str, str | None], Any] = {}
        resolved: builtins.list[JobRequest] = []
        for i, req in enumerate(reqs):
            try:
                resolved.append(self.with_regions(p, req))
            except InvalidRequest as exc:
                field = f"jobs[{i}].{exc.field}" if exc.field else f"jobs[{i}]"
                raise InvalidRequest(f"jobs[{i}]: {exc.message}", field=field) from exc
        reqs = resolved
        for i, req in enumerate(reqs):
            try:
                self._validate(p, req, cache)
            except InvalidRequest as exc:
                field = f"jobs[{i}].{exc.field}" if exc.field else f"jobs[{i}]"
                raise InvalidRequest(f"jobs[{i}]: {exc.message}", field=field) from exc
        try:
            self.quotas.check_submit(p, [req.priority for req in reqs])
        except (RateLimited, Forbidden):
            digest = hashlib.sha256("\n".join(body_hash(r) for r in reqs).encode()).hexdigest()
            stored = self._stored_replay(p, idempotency_key, f"batch:{digest}", reqs)
            if stored is None:
                raise
            return [job.id for job in stored]
        per_model: dict[str, int] = defaultdict(int)
        for req in reqs:
            per_model[req.model] += 1
        for model, count in per_model.items():
            self._check_depth(model, count)
        created = self._now()
        if idempotency_key is not None:
            return self._submit_keyed_batch(p, reqs, idempotency_key, created)
        batch: builtins.list[tuple[JobRecord, int]] = []
        for req in reqs:
            job = new_job(p, req, new_id("job"), created)
            job.queue_token = new_token()
            batch.append((job, random.randrange(self._settings.queue_shards)))
        try:
            self._ops.enqueue_batch(batch)
        except Exception:
            self._undo_batch([job for job, _ in batch])
            raise
        return [job.id for job, _ in batch]

    def _stored_replay(
        self,
        p: Principal,
        key: str | None,
        digest: str,
        reqs: builtins.list[JobRequest] | None = None,
    ) -> builtins.list[JobRecord] | None:
        """The jobs a keyed submit stored before, when a quota now refuses its retry (the
        answer was lost; the SDK retries with the same key): a replay is answered, never
        refused; the key with another body is a Conflict, as without quotas. None: no such
        submit stored whole (the refusal stands). Read only after a refusal (not hot)."""
        if key is None:
            return None
        held = self._store.idempotency.find_key(f"{p.tenant}#{key}", self._now())
        if held is None:
            return None
        if held.body_hash != digest:
            raise Conflict("this Idempotency-Key was used with a different request body")
        if reqs is None:
            job = self._store.jobs.get_job(held.job_id)
            return None if job is None else [job]
        ids = [job.id for job, _ in self._batch_jobs(p, reqs, held.queue_token, held.created_at)]
        stored = self._store.jobs.get_jobs(ids)
        return [stored[i] for i in ids] if len(stored) == len(ids) else None

    def _batch_jobs(
        self, p: Principal, reqs: builtins.list[JobRequest], seed: str, created: float
    ) -> builtins.list[tuple[JobRecord, int]]:
        """The jobs of a keyed batch, each id, queue token and shard derived from ``seed``
        (any replica rebuilds the same ones from the key's record)."""
        out: builtins.list[tuple[JobRecord, int]] = []
        for i, req in enumerate(reqs):
            digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
            job = new_job(p, req, f"job_{int(created * 1000):012x}{digest[:24]}", created)
            job.queue_token = digest[24:40]
            out.append((job, int(digest[40:48], 16) % self._settings.queue_shards))
        return out

    def _submit_keyed_batch(
        self, p: Principal, reqs: builtins.list[JobRequest], key: str, created: float
    ) -> builtins.list[str]:
        seed = new_token()
        digest = hashlib.sha256("\n".join(body_hash(r) for r in reqs).encode()).hexdigest()
        batch = self._batch_jobs(p, reqs, seed, created)
        claim = IdempotencyRecord(
            key=f"{p.tenant}#{key}",
            body_hash=f"batch:{digest}",
            job_id=batch[0][0].id,
            created_at=created,
            shard=len(reqs),
            queue_token=seed,
            expires_at=created + IDEMPOTENCY_TTL_S,
        )
        held = self._ops.enqueue_batch(batch, claim=(claim, self._store.idempotency))
        if held is None:
            return [job.id for job, _ in batch]
        if held.body_hash != claim.body_hash:
            raise Conflict("this Idempotency-Key was used with a different request body")
        batch = self._batch_jobs(p, reqs, held.queue_token, held.created_at)
        stored = self._store.jobs.get_jobs([job.id for job, _ in batch])
        missing = [(job, shard) for job, shard in batch if job.id not in stored]
        if missing:
            if self._now() - held.created_at < BATCH_REPLAY_GRACE_S:
                # The first request may still be writing them (unconditionally, on DynamoDB):
                # never race it; it ends within its storage deadline.
                raise Unavailable(
                    "the first request with this Idempotency-Key is still being stored",
                    retry_after=int(BATCH_REPLAY_GRACE_S // 4) or 1,
                )
            log.warning("batch %s: writing %d jobs its first submit left out", key, len(missing))
            for job, shard in missing:  # each a conditional create: a replica racing is fine
                self._ops.enqueue_new(job, shard)
        return [job.id for job, _ in batch]

    def _undo_batch(self, jobs: builtins.list[JobRecord]) -> None:
        """Cancel what a failed batch left (nothing where the store rolled it back)."""
        try:
            stored = self._store.jobs.get_jobs([job.id for job in jobs])
        except Exception:
            log.warning("could not read back the jobs of a failed batch", exc_info=True)
            return
        for current in stored.values():
            try:
                if current.status == "QUEUED":
                    self._cancel_queued(current, "the batch could not be stored whole")
            except Exception:
                log.warning("could not undo job %s of a failed batch", current.id, exc_info=True)

    # ------------------------------------------------------------------ read
    def _load(self, p: Principal, job_id: str) -> JobRecord:
        job = self._store.jobs.get_job(job_id) if job_id.startswith("job_") else None
        return self._expire_if_due(self._visible(p, job_id, job))

    @staticmethod
    def _visible(p: Principal, job_id: str, job: JobRecord | None) -> JobRecord:
        if job is None or not p.can_see_tenant(job.tenant):
            raise NotFound(f"job {job_id!r} not found")
        return job

    def _expire_if_due(self, job: JobRecord) -> JobRecord:
        """A job queued past its TTL, timed out now (lazily, at read time)."""
        if job.status == "QUEUED" and self._now() >= job.ttl_deadline:
            return (
                self._ops.time_out_queued(job, self._now())
                or self._store.jobs.get_job(job.id)
                or job
            )
        return job

    async def _load_shared(self, p: Principal, job_id: str) -> JobRecord:
        """``_load`` for long polls: the read is shared with the other waits (``SharedReads``)."""
        job = await self._reads.get(job_id) if job_id.startswith("job_") else None
        job = self._visible(p, job_id, job)
        if job.status == "QUEUED" and self._now() >= job.ttl_deadline:
            job = await self.offload(self._expire_if_due, job)
        return job

    def get(self, p: Principal, job_id: str) -> JobView:
        p.require("jobs:read")
        return self._with_reason(self._load(p, job_id))

    def inputs(self, p: Principal, job_id: str) -> builtins.list[Tensor]:
        """The job's input tensors as submitted (large ones as ``data_ref``), for the console's
        job page; 404 where ``get`` would be."""
        p.require("jobs:read")
        return [Tensor(**t) for t in self._load(p, job_id).request.get("inputs") or []]

    def _with_reason(self, job: JobRecord) -> JobView:
        """The view, with ``waiting_reason`` for a QUEUED job when placement can tell, and
        ``cold_host`` for a job that ran when capacity can tell."""
        view = self.view(job)
        if job.status == "QUEUED" and self.waiting_reason is not None:
            try:
                view.waiting_reason = self.waiting_reason(job)
            except Exception:
                log.warning("waiting_reason failed for %s", job.id, exc_info=True)
        if job.status == "QUEUED" and view.waiting_reason is None:
            view.waiting_reason = self.quotas.waiting_reason(job.tenant)
        if job.status == "QUEUED" and self.regions is not None:
            try:
                view.waiting_reason = self._region_reason(job, view.waiting_reason)
            except Exception:
                log.warning("region waiting_reason failed for %s", job.id, exc_info=True)
        if job.runner_id and self.cold_host is not None:
            try:
                view.cold_host = self.cold_host(job)
            except Exception:
                log.warning("cold_host failed for %s", job.id, exc_info=True)
        return view

    def _region_reason(self, job: JobRecord, reason: str | None) -> str | None:
        """``reason`` with what the job's region policy waits for (region, spill delay)."""
        assert self.regions is not None
        policy = RegionPolicy.of_job(job.region, job.request, self.regions.default_spill_s)
        words = self.regions.waiting_reason(policy, self._now() - job.created_at)
        if words is None:
            return reason
        return words if not reason else f"{words}; {reason}"

    async def wait(self, p: Principal, job_id: str, wait_s: float) -> JobView:
        """The job once terminal, or as it is after ``wait_s`` (<= max_wait_s) seconds."""
        p.require("jobs:read")
        deadline = time.monotonic() + max(0.0, min(wait_s, self._settings.max_wait_s))
        with self.wakeups.watch([job_key(job_id)]) as changed:
            while True:
                changed.clear()  # before the read: a change committed after it wakes us
                storage_budget.renew()  # each round of a long poll has its own budget
                job = await self._load_shared(p, job_id)
                left = deadline - time.monotonic()
                if job.status in TERMINAL_STATUSES or left <= 0:
                    if job.status != "QUEUED" and (job.runner_id is None or not self.cold_host):
                        return self.view(job)  # nothing to look up: no thread
                    return await self.offload(self._with_reason, job)
                await sleep_or_wake(changed, min(self._settings.poll_interval_s, left))

    def list_jobs(
        self, p: Principal, status: str | None, model: str | None, limit: int, cursor: str | None
    ) -> JobList:
        """The caller's tenant's jobs, newest first (admins: every tenant's)."""
        p.require("jobs:read")
        tenant = None if p.is_admin else p.tenant
        found, next_cursor = self._store.jobs.list_jobs(
            tenant, status, model, max(1, min(limit, MAX_LIST)), cursor
        )
        return JobList(jobs=[self.view(j) for j in found], next_cursor=next_cursor)

    # ------------------------------------------------------------------ cancel
    def _cancel_queued(self, job: JobRecord, message: str) -> JobRecord | None:
        error = {"code": "cancelled", "message": message}
        return self._ops.finish_queued(job, "CANCELLED", error, self._now())

    def cancel(self, p: Principal, job_id: str) -> JobView:
        """QUEUED or RUNNING -> CANCELLED; Conflict when already terminal."""
        p.require("jobs:write")
        for _ in range(5):
            job = self._load(p, job_id)
            if job.status in TERMINAL_STATUSES:
                raise Conflict(f"job {job_id} is already {job.status}")
            done: JobRecord | None
            if job.status == "QUEUED":
                done = self._cancel_queued(job, "cancelled by the user")
            else:
                assert job.lease_token is not None
                done = self._store.jobs.finish_running(
                    job.id,
                    job.lease_token,
                    "CANCELLED",
                    now=self._now(),
                    error={"code": "cancelled", "message": "cancelled by the user"},
                )
                if done is not None:
                    if job.lease_key:
                        self._store.queue.delete_marker(*job.lease_key)
                    self._ops.delete_ttl_marker(job)
                    self._transitioned(done, "RUNNING")
            if done is not None:
                return self.view(done)
        raise Conflict(f"job {job_id} kept changing; try again")

    def cancelled_among(self, job_ids: builtins.list[str]) -> builtins.list[str]:
        """The ids among ``job_ids`` whose job is now CANCELLED (heartbeat ``cancel_jobs``)."""
        statuses = self._store.jobs.job_statuses([i for i in job_ids if i.startswith("job_")])
        return [i for i in dict.fromkeys(job_ids) if statuses.get(i) == "CANCELLED"]

    # ------------------------------------------------------------------ runner protocol
    async def lease(self, runner_id: str, region: str | None, req: LeaseRequest) -> LeaseResponse:
        """Claim up to ``max_jobs`` jobs of the offered models; long-polls up to ``wait_s``."""
        wait_s = max(0.0, min(req.wait_s, self._settings.max_lease_wait_s))
        deadline = time.monotonic() + wait_s
        asked = req.models
        first = True
        # a heartbeat of this runner reporting a newly READY model ends the poll (an empty
        # answer): the runner asks again at once, offering that model too (cold starts)
        readied = self._readied.get(runner_id, 0)
        keys = [*(model_key(m.name) for m in asked), runner_key(runner_id)]
        with self.wakeups.watch(keys) as queued:
            while True:
                if self._readied.get(runner_id, 0) != readied:
                    return LeaseResponse(jobs=[])
                queued.clear()  # before the read: a job queued after it wakes us
                storage_budget.renew()  # each round of a long poll has its own budget
                usable = self.runner_usable
                # Revoked during the long poll: claim nothing it could not complete.
                if not first and usable and not await self.offload(usable, runner_id):
                    return LeaseResponse(jobs=[])
                if self.lease_offers is not None and (first or len(req.models) < len(asked)):
                    # Placement may hold back a model (not READY there yet, as far as the
                    # last heartbeat said): ask again each round until all are offered.
                    offers = await self.offload(self.lease_offers, runner_id, asked)
                    req = req.model_copy(update={"models": offers})
                first = False
                jobs = await self.offload(self._lease_once, runner_id, region, req)
                left = deadline - time.monotonic()
                if jobs or left <= 0:
                    return LeaseResponse(jobs=jobs)
                await sleep_or_wake(queued, min(self._settings.poll_interval_s, left))

    def runner_readied(self, runner_id: str) -> None:
        """A heartbeat of ``runner_id`` reported a model READY that was not: its lease long
        poll on this replica answers now, so it asks again offering that model too."""
        self._readied[runner_id] = self._readied.get(runner_id, 0) + 1
        self.wakeups.notify(runner_key(runner_id))

    def _candidates(
        self, offers: dict[str, set[str]], region: str | None, want: int
    ) -> builtins.list[QueueEntry]:
        keys = self._store.queue.keys
        shards = [
            keys.queue_shard(model, n)
            for model in offers
            for n in range(self._settings.queue_shards)
        ]

        t = self._now()
        region_fits = self._region_fits

        def fits(e: QueueEntry) -> bool:
            return (not e.version or e.version in offers[e.model]) and region_fits(
                e.region, region, t - e.created_at
            )

        pool = frozenset(offers)
        return self._heads.take(shards, fits, want, lambda es, n: self._fair.pick(pool, es, n))

    def _region_fits(self, entry_region: str, runner_region: str | None, queued_s: float) -> bool:
        """Region eligibility of a runner for a queue entry (services/regions.py): never
        outside the job's ``regions_allowed``; its preferred region at once; other allowed
        regions nearest first, one ``spill_after_s`` apart."""
        if not entry_region:
            return True
        if self.regions is not None:
            return self.regions.fits(entry_region, runner_region, queued_s)
        return static_region_fits(entry_region, runner_region, queued_s)

    def _lease_once(
        self, runner_id: str, region: str | None, req: LeaseRequest
    ) -> builtins.list[LeasedJob]:
        offers: dict[str, set[str]] = defaultdict(set)
        for m in req.models:
            offers[m.name].add(m.version)
        if not offers:
            return []
        leased: builtins.list[LeasedJob] = []
        self.quotas.before_lease()  # what fair leasing reads under the read-ahead's lock
        for _ in range(CLAIM_ROUNDS):  # a round whose claims all lost a race takes more
            want = req.max_jobs - len(leased)
            pending = self._candidates(offers, region, want)
            t = self._now()
            claims: builtins.list[tuple[QueueEntry, str]] = []
            for entry in pending:
                if entry.ttl_deadline <= t:
                    self._ops.expire_entry(entry, t)
                    continue
                claims.append((entry, entry.version or max(offers[entry.model], key=int)))
            for job in self._ops.claim_many(claims, runner_id, t):  # one batch per round
                leased.append(self.payloads.for_lease(job, leased_job(job)))
                self._region_leased(job, region)
            if len(leased) >= req.max_jobs or not pending:
                break
        return leased

    def _region_leased(self, job: JobRecord, region: str | None) -> None:
        if not self.on_region_lease:
            return
        placement = (
            "any" if job.region is None else ("preferred" if job.region == region else "spilled")
        )
        for hook in self.on_region_lease:
            try:
                hook(region, placement)
            except Exception:
                log.warning("on_region_lease hook failed", exc_info=True)

    def _held(self, runner_id: str, job_id: str, lease_token: str) -> JobRecord:
        job = self._store.jobs.get_job(job_id) if job_id.startswith("job_") else None
        return self._check_held(runner_id, job_id, lease_token, job)

    @staticmethod
    def _check_held(
        runner_id: str, job_id: str, lease_token: str, job: JobRecord | None
    ) -> JobRecord:
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if job.status != "RUNNING" or job.lease_token != lease_token or job.runner_id != runner_id:
            raise StaleLease(f"the lease of job {job_id} is no longer held (job {job.status})")
        return job

    def extend(self, runner_id: str, job_id: str, lease_token: str) -> ExtendResponse:
        """Renew a lease; never past the attempt's deadline (started_at + timeout_s)."""
        job = self._held(runner_id, job_id, lease_token)
        t = self._now()
        deadline = job.deadline or t
        if t >= deadline:
            raise StaleLease(f"job {job_id} ran past its timeout_s={job.timeout_s}")
        expires = min(t + self._settings.lease_duration_s, deadline)
        marker = self._ops.lease_marker(job_id, expires, lease_token)
        key = (marker.shard, marker.sk)
        self._store.queue.put_marker(marker)
        if self._store.jobs.extend_lease(job_id, lease_token, runner_id, expires, key) is None:
            if job.lease_key != key:
                self._store.queue.delete_marker(*key)
            raise StaleLease(f"the lease of job {job_id} is no longer held")
        if job.lease_key and job.lease_key != key:
            self._store.queue.delete_marker(*job.lease_key)
        return ExtendResponse(lease_expires_at=iso(expires) or "")

    def complete(self, runner_id: str, job_id: str, req: CompleteRequest) -> CompleteResponse:
        """Commit a result exactly once; a retry of the same commit answers the same."""
        job = self._store.jobs.get_job(job_id) if job_id.startswith("job_") else None
        t = self._now()
        prepared = self._prepare(runner_id, job_id, job, req, t)
        if isinstance(prepared, GpufleetError):
            raise prepared
        if isinstance(prepared, CompleteResponse):
            return prepared
        [done] = self._ops.finish_many([prepared], t)
        if done is None:
            raise StaleLease(f"the lease of job {job_id} is no longer held")
        _log_commit(done, runner_id)
        return CompleteResponse(id=job_id, status=done.status)

    def complete_batch(
        self, runner_id: str, items: builtins.list[CompleteItem]
    ) -> builtins.list[CompleteItemResult]:
        """Commit up to 100 results, each as ``complete`` would (fenced by its own lease token):
        one read of every job, one batch of commits, hooks per job. Answers in the items'
        order; a job named again later in the batch is answered as a retry of its first."""
        ids = [item.job_id for item in items if item.job_id.startswith("job_")]
        records = self._store.jobs.get_jobs(ids) if ids else {}
        t = self._now()
        answers: dict[str, CompleteItemResult] = {}
        to_commit: dict[str, Finish] = {}
        for item in items:
            if item.job_id in answers or item.job_id in to_commit:
                continue
            prepared = self._prepare(runner_id, item.job_id, records.get(item.job_id), item, t)
            if isinstance(prepared, Finish):
                to_commit[item.job_id] = prepared
            else:
                answers[item.job_id] = _answer(item.job_id, prepared)
        done = self._ops.finish_many(list(to_commit.values()), t)
        for job_id, rec in zip(to_commit, done, strict=True):
            if rec is None:
                stale = StaleLease(f"the lease of job {job_id} is no longer held")
                answers[job_id] = _answer(job_id, stale)
            else:
                records[job_id] = rec
                answers[job_id] = _answer(job_id, None)
                _log_commit(rec, runner_id)
        out: builtins.list[CompleteItemResult] = []
        answered: set[str] = set()
        for item in items:
            answer = answers[item.job_id]
            if item.job_id in answered and answer.status == "committed":
                rec = records[item.job_id]
                if (rec.lease_token, rec.status) != (item.lease_token, item.status):
                    answer = _answer(item.job_id, StaleLease(f"job {item.job_id} is {rec.status}"))
            answered.add(item.job_id)
            out.append(answer)
        return out

    def _prepare(
        self, runner_id: str, job_id: str, job: JobRecord | None, req: Completion, t: float
    ) -> Prepared:
        """What committing ``req`` for ``job`` (as read) takes: the write, the answer of a
        retry already committed, or the refusal. Large outputs are stored in the bucket here."""
        try:
            job = self._check_held(runner_id, job_id, req.lease_token, job)
        except StaleLease as exc:
            if job and job.lease_token == req.lease_token and job.status == req.status:
                return CompleteResponse(id=job_id, status=req.status)  # a retry
            return exc
        except NotFound as exc:
            return exc
        try:
            outputs_json, outputs_ref = self._store_outputs(job, req)
        except InvalidRequest as exc:
            return exc
        error = req.error.model_dump() if req.error else None
        if req.status == "FAILED" and error is None:
            error = {"code": "failed", "message": "the runner reported a failure"}
        started = job.started_at or t
        run_ms, run_info = run_timings(job, req.timings, (t - started) * 1000)
        if req.logs and len(req.logs) <= INLINE_LOG_CHARS:  # in the record: no extra write
            run_info = {**(run_info or {}), "logs": req.logs}
        elif req.logs:  # kept in the bucket beside large outputs; the record keeps the key
            run_info = {**(run_info or {}), "logs_ref": self._store_logs(job, req)}
        return Finish(
            job=job,
            lease_token=req.lease_token,
            status=req.status,
            outputs_json=outputs_json,
            outputs_ref=outputs_ref,
            error=error,
            run_ms=run_ms,
            run_info=run_info,
        )

    def _store_logs(self, job: JobRecord, req: Completion) -> str:
        """The result's logs in the bucket (at most ``MAX_JOB_LOG_CHARS``, the newest kept);
        their key, which the job's ``run_info`` keeps."""
        text = req.logs or ""
        truncated = len(text) > MAX_JOB_LOG_CHARS
        if truncated:
            text = text[-MAX_JOB_LOG_CHARS:]
        tag = hashlib.sha256(req.lease_token.encode()).hexdigest()[:16]
        ref = f"{RESULTS_PREFIX}{job.id}/{tag}/logs.json"
        self._blobs.put_json(ref, {"logs": text, "truncated": truncated})
        return ref

    def outputs_ref(self, p: Principal, job_id: str) -> str | None:
        """The bucket key of the outputs a job left in the bucket (None: inline, or none);
        404 where ``get`` would be."""
        p.require("jobs:read")
        return self._load(p, job_id).outputs_ref

    def logs(self, p: Principal, job_id: str) -> JobLogs:
        """``GET /v1/jobs/{id}/logs``: the logs its runner sent with its result (empty until
        it has one, or when the runner sent none); 404 where ``get`` would be."""
        p.require("jobs:read")
        job = self._load(p, job_id)
        info = job.run_info or {}
        ref = info.get("logs_ref")
        out = JobLogs(id=job.id, status=job.status)
        if "logs" in info:  # short logs live in the record itself
            out.logs = str(info["logs"])
        elif ref:
            doc = self._blobs.get_json(ref) or {}
            out.logs = str(doc.get("logs") or "")
            out.truncated = bool(doc.get("truncated"))
        return out

    def _store_outputs(self, job: JobRecord, req: Completion) -> tuple[str | None, str | None]:
        if req.outputs_ref is not None:
            return None, self.payloads.check_result(job.id, req.lease_token, req.outputs_ref)
        if req.outputs is None:
            return None, None
        doc = [t.model_dump(exclude_none=True) for t in req.outputs]
        text = json.dumps(doc, separators=(",", ":"))
        room = min(self._settings.max_inline_bytes, self._store.jobs.max_inline_outputs(job))
        if len(text) <= room:  # else the bucket: the store says what its job item holds
            return text, None
        tag = hashlib.sha256(req.lease_token.encode()).hexdigest()[:16]
        ref = f"{RESULTS_PREFIX}{job.id}/{tag}/outputs.json"
        self._blobs.put_json(ref, doc)
        return None, ref

    # ------------------------------------------------------------------ housekeeping
    def sweep(self) -> dict[str, int]:
        """Requeue or fail expired leases, time out jobs queued past their TTL; store this
        replica's tenant load counts."""
        swept = self._sweeper.sweep()
        try:
            self.quotas.refresh_loads()
        except Exception:
            log.warning("could not store the tenant load counts (retried)", exc_info=True)
        return swept

    def queue_depths(self) -> dict[str, int]:
        """model -> queued jobs (for /metrics)."""
        return self._store.queue.all_depths()

    def queue_snapshot(self, models: builtins.list[str]) -> dict[str, QueueSnapshot]:
        """Depth, oldest entry and pinned versions of each model's queue (for placement).

        The oldest entry and the pinned versions are read from the first 100 entries of
        each shard (priority order): an estimate that is exact for queues that short.
        """
        depths = self._store.queue.all_depths()
        keys = self._store.queue.keys
        out: dict[str, QueueSnapshot] = {}
        for model in models:
            entries = [
                e
                for shard in range(self._settings.queue_shards)
                for e in self._store.queue.head(keys.queue_shard(model, shard), 100)
            ]
            by_region: dict[str, float] = {}
            by_policy: dict[str, tuple[int, float]] = {}
            for e in entries:
                preferred = RegionPolicy.decode(e.region).preferred if e.region else None
                if preferred is not None:
                    by_region[preferred] = min(by_region.get(preferred, e.created_at), e.created_at)
                n, oldest = by_policy.get(e.region, (0, e.created_at))
                by_policy[e.region] = (n + 1, min(oldest, e.created_at))
            out[model] = QueueSnapshot(
                depth=max(depths.get(model, 0), len(entries)),
                oldest_at=min((e.created_at for e in entries), default=None),
                pinned_versions=frozenset(e.version for e in entries if e.version),
                oldest_by_region=by_region,
                by_policy=by_policy,
            )
        return out

    def ping(self) -> None:
        """Raises Unavailable when the tables or the bucket cannot be reached."""
        self._store.jobs.ping()
        self._store.queue.ping()
        self._blobs.ping()


def run_timings(
    job: JobRecord, timings: dict[str, float] | None, wall_ms: float
) -> tuple[int, dict[str, Any] | None]:
    """``run_ms`` and the run's details from the runner's ``timings``.

    ``run_ms`` is the model's own time (``triton_ms``: Triton's compute as the runner timed
    it) when reported, else the lease-to-commit wall time. ``runner_ms`` is the rest of that
    wall time (lease and complete transport, payload fetch and upload). ``cold_start``: the
    version was loaded on the runner (``loaded_at``, epoch seconds) after the job was
    submitted, so the job waited for the load; ``load_ms`` is that load's duration."""
    if not timings or "triton_ms" not in timings:
        return int(wall_ms), None
    triton_ms = float(timings["triton_ms"])
    info: dict[str, Any] = {"runner_ms": max(0, round(wall_ms - triton_ms))}
    loaded_at = timings.get("loaded_at")
    if loaded_at is not None:
        info["cold_start"] = float(loaded_at) > job.created_at
        if info["cold_start"] and timings.get("load_ms") is not None:
            info["load_ms"] = round(float(timings["load_ms"]))
    return round(triton_ms), info


def _log_commit(job: JobRecord, runner_id: str) -> None:
    """One line per committed result, written by the service (an access log has no line for
    a request whose client went away before the answer, yet its commit stands)."""
    log.info(
        "job %s committed %s by runner %s (attempt %d, run %s ms)",
        job.id,
        job.status,
        runner_id,
        job.attempts,
        job.run_ms,
    )


_OUTCOMES = {"not_found": "not_found", "conflict": "conflict", "invalid_request": "invalid"}
"""Error code of a refused result -> its status in a batch complete's answer."""


def _answer(job_id: str, refused: GpufleetError | CompleteResponse | None) -> CompleteItemResult:
    """A batch complete's answer for one result: committed (now, or before: a retry), or why
    it was refused."""
    if refused is None or isinstance(refused, CompleteResponse):
        return CompleteItemResult(job_id=job_id, status="committed")
    return CompleteItemResult(
        job_id=job_id,
        status=_OUTCOMES.get(refused.code, "invalid"),  # type: ignore[arg-type]
        error=ErrorInfo(code=refused.code, message=refused.message, details=refused.details),
    )
