"""Submitting jobs: one or a batch, idempotent with a key (part of ``JobService``)."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import defaultdict
from typing import Any

from gpufleet.wire import (
    JobRequest,
    JobView,
)

from control_plane.clock import new_id
from control_plane.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    RateLimited,
    Unavailable,
)
from control_plane.services.job_views import body_hash, new_job
from control_plane.services.jobs_core import JobCore
from control_plane.services.principal import Principal
from control_plane.services.queue_ops import new_token
from control_plane.services.tensors import validate_tensors
from control_plane.storage.protocols import (
    IdempotencyRecord,
    JobRecord,
    ModelVersionRecord,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

IDEMPOTENCY_TTL_S = 24 * 3600
# A keyed batch replayed with jobs missing this soon after its first submit waits (503) rather
# than write them: the first request may still be writing them (its storage calls are bounded
# by the storage deadlines, far below this).
BATCH_REPLAY_GRACE_S = 60.0
MODEL_CACHE_S = 2.0  # how long a replica trusts a model's READY version at submit
DEPTH_CACHE_S = 1.0  # how long a replica trusts a queue depth it read (while far from full)


class JobSubmit(JobCore):
    """Submit: validation against the READY version (cached per replica), region defaults,
    quotas and queue depth (backpressure), single and batch submits, idempotency keys."""

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
        return self.regions.resolve(p.tenant, req, key_id=None if p.external else p.sub)

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
        job, created = self.submit_record(p, req, idempotency_key)
        return self.view(job), created

    def submit_record(
        self, p: Principal, req: JobRequest, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """``submit``, answering the job's record instead of its wire view: the route of
        ``POST /v1/jobs`` needs only its id, status and creation time (or waits for it), so
        the full view is not built for every submit."""
        p.require("jobs:write")
        req = self.with_regions(p, req)
        self._validate(p, req, {})
        try:
            self.quotas.check_submit(p, [req.priority])
        except (RateLimited, Forbidden):
            stored = self._stored_replay(p, idempotency_key, body_hash(req))
            if stored is None:
                raise
            return stored[0], False
        self._check_depth(req.model)
        created = self._now()
        job = new_job(p, req, new_id("job"), created)
        job.queue_token = new_token()
        shard = random.randrange(self._settings.queue_shards)
        if idempotency_key is None:
            self._ops.enqueue_new(job, shard)
            return job, True
        claim = IdempotencyRecord(
            key=f"{p.tenant}#{idempotency_key}",
            body_hash=body_hash(req),
            job_id=job.id,
            created_at=created,
            shard=shard,
            queue_token=job.queue_token,
            expires_at=created + IDEMPOTENCY_TTL_S,
        )
        held = self._ops.enqueue_new(job, shard, claim=(claim, self._store.idempotency))
        if not isinstance(held, IdempotencyRecord):  # claimed and queued (one transaction)
            return job, True
        if held.body_hash != claim.body_hash:
            raise Conflict("this Idempotency-Key was used with a different request body")
        existing = self._store.jobs.get_job(held.job_id)
        if existing is None:  # the first submit has not written its job yet (or crashed)
            job = new_job(p, req, held.job_id, held.created_at)
            job.queue_token = held.queue_token
            self._ops.enqueue_new(job, held.shard)
            existing = self._store.jobs.get_job(held.job_id) or job
        return existing, False

    def submit_batch(
        self,
        p: Principal,
        reqs: list[JobRequest],
        idempotency_key: str | None = None,
    ) -> list[str]:
        """Validate every job first, then queue them all.

        Without a key, a write that fails cancels what was stored again. With a key, the
        batch's ids derive from a seed kept in the key's record: on the embedded store the
        record and every job commit in one transaction (all or nothing); on DynamoDB a replay
        finds the jobs a crash left unwritten and writes exactly those (each a conditional
        create), so every replay answers the same ids and the batch ends up whole, once.
        """
        p.require("jobs:write")
        cache: dict[tuple[str, str | None], Any] = {}
        resolved: list[JobRequest] = []
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
        batch: list[tuple[JobRecord, int]] = []
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
        reqs: list[JobRequest] | None = None,
    ) -> list[JobRecord] | None:
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
        self, p: Principal, reqs: list[JobRequest], seed: str, created: float
    ) -> list[tuple[JobRecord, int]]:
        """The jobs of a keyed batch, each id, queue token and shard derived from ``seed``
        (any replica rebuilds the same ones from the key's record)."""
        out: list[tuple[JobRecord, int]] = []
        for i, req in enumerate(reqs):
            digest = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
            job = new_job(p, req, f"job_{int(created * 1000):012x}{digest[:24]}", created)
            job.queue_token = digest[24:40]
            out.append((job, int(digest[40:48], 16) % self._settings.queue_shards))
        return out

    def _submit_keyed_batch(
        self, p: Principal, reqs: list[JobRequest], key: str, created: float
    ) -> list[str]:
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

    def _undo_batch(self, jobs: list[JobRecord]) -> None:
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
