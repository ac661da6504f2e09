"""Committing the results runners send (part of ``JobService``)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Committed:
    """A result committed (now, or by an earlier attempt): the job's status and lease token."""

    status: str
    lease_token: str | None


# What a result comes to before its commit: a write to make, an answer already known (a retry
# of a committed result), or the refusal (NotFound, StaleLease, InvalidRequest).
Prepared = Finish | Committed | GpufleetError


# Logs this short stay in the job record (``run_info``) instead of a bucket object: one
# write fewer per job on the commit path (a blob write with fsync cost ~25% of the control
# plane's CPU per job in bench_runner). Longer ones go to the bucket as before.
INLINE_LOG_CHARS = 2048


class JobCompletion(JobCore):
    """Committing results exactly once, fenced by the lease token: one or a batch."""

    def complete(self, runner_id: str, job_id: str, req: CompleteRequest) -> CompleteResponse:
        """Commit a result exactly once; a retry of the same commit answers the same."""
        [answer] = self._commit(runner_id, [(job_id, req)])
        if isinstance(answer, GpufleetError):
            raise answer
        return CompleteResponse(id=job_id, status=answer.status)  # type: ignore[arg-type]

    def complete_batch(self, runner_id: str, items: list[CompleteItem]) -> list[CompleteItemResult]:
        """Commit up to 100 results, each as ``complete`` would (fenced by its own lease token):
        one read of the jobs this replica did not lease, one batch of commits, hooks per job.
        Answers in the items' order; a job named again later in the batch is answered as a
        retry of its first."""
        firsts: dict[str, CompleteItem] = {}
        for item in items:
            firsts.setdefault(item.job_id, item)
        outcomes = self._commit(runner_id, [(i, item) for i, item in firsts.items()])
        answers = dict(zip(firsts, outcomes, strict=True))
        out: list[CompleteItemResult] = []
        answered: set[str] = set()
        for item in items:
            outcome = answers[item.job_id]
            if (
                item.job_id in answered
                and isinstance(outcome, Committed)
                and (outcome.lease_token, outcome.status) != (item.lease_token, item.status)
            ):
                outcome = StaleLease(f"job {item.job_id} is {outcome.status}")
            answered.add(item.job_id)
            out.append(_answer(item.job_id, outcome))
        return out

    def _commit(
        self, runner_id: str, items: list[tuple[str, Completion]]
    ) -> list[Committed | GpufleetError]:
        """Commit each result (one per job) fenced by its lease token: the committed answer
        (also for a retry of a result committed before) or the refusal, in order.

        A job this replica leased under that token is not read first (``LeasedRecords``: the
        record as claimed): its commit is conditional on the token all the same, and when
        the condition fails (cancelled, expired and re-leased, or committed by an earlier
        attempt of this call) the job is read and the result answered as before."""
        cached = {i: hit for i, req in items if (hit := self._leased.get(i, req.lease_token))}
        ids = [i for i, _ in items if i.startswith("job_") and i not in cached]
        records = self._store.jobs.get_jobs(ids) if ids else {}
        t = self._now()
        answers: dict[str, Committed | GpufleetError] = {}
        to_commit: dict[str, Finish] = {}
        for job_id, req in items:
            hit = cached.get(job_id)
            job = hit[0] if hit else records.get(job_id)
            prepared = self._prepare(runner_id, job_id, job, req, t, hit[1] if hit else None)
            if isinstance(prepared, Finish):
                to_commit[job_id] = prepared
            else:
                answers[job_id] = prepared
        done = self._ops.finish_many(list(to_commit.values()), t)
        lost = [i for i, rec in zip(to_commit, done, strict=True) if rec is None and i in cached]
        fresh = self._store.jobs.get_jobs(lost) if lost else {}
        reqs = dict(items)
        for job_id, rec in zip(to_commit, done, strict=True):
            self._leased.drop(job_id)
            if rec is not None:
                _log_commit(rec, runner_id)
                answers[job_id] = Committed(rec.status, rec.lease_token)
                continue
            again: Prepared = StaleLease(f"the lease of job {job_id} is no longer held")
            if job_id in fresh:  # read now: a retry of a commit made before, or the refusal
                again = self._prepare(runner_id, job_id, fresh[job_id], reqs[job_id], t)
            answers[job_id] = (
                again
                if not isinstance(again, Finish)
                else StaleLease(f"the lease of job {job_id} is no longer held")
            )
        return [answers[job_id] for job_id, _ in items]

    def _prepare(
        self,
        runner_id: str,
        job_id: str,
        job: JobRecord | None,
        req: Completion,
        t: float,
        room: int | None = None,
    ) -> Prepared:
        """What committing ``req`` for ``job`` (as read, or as leased: then ``room`` is what
        its outputs may take inline) takes: the write, the answer of a retry already
        committed, or the refusal. Large outputs are stored in the bucket here."""
        try:
            job = self._check_held(runner_id, job_id, req.lease_token, job)
        except StaleLease as exc:
            if job and job.lease_token == req.lease_token and job.status == req.status:
                return Committed(req.status, req.lease_token)  # a retry
            return exc
        except NotFound as exc:
            return exc
        try:
            outputs_json, outputs_ref = self._store_outputs(job, req, room)
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

    def _store_outputs(
        self, job: JobRecord, req: Completion, room: int | None = None
    ) -> tuple[str | None, str | None]:
        if req.outputs_ref is not None:
            return None, self.payloads.check_result(job.id, req.lease_token, req.outputs_ref)
        if req.outputs is None:
            return None, None
        doc = [t.model_dump(exclude_none=True) for t in req.outputs]
        text = json.dumps(doc, separators=(",", ":"))
        if room is None:  # what the store's job item holds next to this job's request
            room = self._store.jobs.max_inline_outputs(job)
        room = min(self._settings.max_inline_bytes, room)
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


def _answer(job_id: str, refused: GpufleetError | Committed | None) -> CompleteItemResult:
    """A batch complete's answer for one result: committed (now, or before: a retry), or why
    it was refused."""
    if refused is None or isinstance(refused, Committed):
        return CompleteItemResult(job_id=job_id, status="committed")
    return CompleteItemResult(
        job_id=job_id,
        status=_OUTCOMES.get(refused.code, "invalid"),  # type: ignore[arg-type]
        error=ErrorInfo(code=refused.code, message=refused.message, details=refused.details),
    )
