"""Committing the results runners send (part of ``JobService``)."""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
from typing import Any

from gpufleet.wire import (
    MAX_JOB_LOG_CHARS,
    CompleteItem,
    CompleteItemResult,
    CompleteRequest,
    CompleteResponse,
    ErrorInfo,
)

from control_plane.errors import (
    GpufleetError,
    InvalidRequest,
    NotFound,
    StaleLease,
)
from control_plane.services.jobs_core import JobCore
from control_plane.services.queue_ops import Finish
from control_plane.storage.definitions import RESULTS_PREFIX
from control_plane.storage.protocols import (
    JobRecord,
)

log = logging.getLogger("control_plane.services.jobs")  # one logger for the job service

Completion = CompleteRequest | CompleteItem
# What a result comes to before its commit: a write to make, an answer already known (a retry
# of a committed result), or the refusal (NotFound, StaleLease, InvalidRequest).
Prepared = Finish | CompleteResponse | GpufleetError


# Logs this short stay in the job record (``run_info``) instead of a bucket object: one
# write fewer per job on the commit path (a blob write with fsync cost ~25% of the control
# plane's CPU per job in bench_runner). Longer ones go to the bucket as before.
INLINE_LOG_CHARS = 2048


class JobCompletion(JobCore):
    """Committing results exactly once, fenced by the lease token: one or a batch."""

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
        return CompleteResponse(id=job_id, status=done.status)  # type: ignore[arg-type]

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
