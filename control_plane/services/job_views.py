"""Conversions between job records and wire types (views, leased jobs, new records)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gpufleet._logs import context as log_context
from gpufleet.wire import (
    ErrorInfo,
    JobRequest,
    JobView,
    LeasedJob,
    OutputRequest,
    Tensor,
)

from control_plane.clock import iso
from control_plane.services.principal import Principal
from control_plane.storage.protocols import BlobStore, JobRecord


def body_hash(req: JobRequest) -> str:
    """sha256 of the canonical JSON of a request (sorted keys, no whitespace)."""
    doc = req.model_dump(mode="json", exclude_none=True)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def job_view(job: JobRecord, blobs: BlobStore, presign_ttl_s: int) -> JobView:
    """The wire view of a job (outputs inline, or a presigned ``outputs_url``)."""
    outputs = [Tensor(**t) for t in job.outputs] if job.outputs is not None else None
    url = blobs.presign_get(job.outputs_ref, presign_ttl_s) if job.outputs_ref else None
    queue_ms = int((job.started_at - job.created_at) * 1000) if job.started_at is not None else None
    return JobView(
        id=job.id,
        status=job.status,
        model=job.model,
        model_version=job.model_version,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=iso(job.created_at) or "",
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        queue_ms=queue_ms,
        run_ms=job.run_ms,
        runner_id=job.runner_id,
        region=job.region,
        regions_allowed=(job.request.get("placement") or {}).get("regions_allowed") or None,
        spill_after_s=(job.request.get("placement") or {}).get("spill_after_s"),
        tags=job.request.get("tags") or {},
        outputs=outputs,
        outputs_url=url,
        error=ErrorInfo(**job.error) if job.error else None,
        **_run_fields(job.run_info),
    )


def _run_fields(info: dict[str, Any] | None) -> dict[str, Any]:
    """``cold_start``, ``load_ms`` and ``runner_ms`` of a finished run (when reported)."""
    if not info:
        return {}
    return {k: info[k] for k in ("cold_start", "load_ms", "runner_ms") if k in info}


def new_job(p: Principal, req: JobRequest, job_id: str, created: float) -> JobRecord:
    """A QUEUED job record for ``req`` (the request body kept for the runner)."""
    request: dict[str, Any] = {
        "inputs": [t.model_dump(exclude_none=True) for t in req.inputs],
        "outputs": [o.model_dump(exclude_none=True) for o in req.outputs]
        if req.outputs is not None
        else None,
        "parameters": req.parameters,
        "webhook": req.webhook.model_dump() if req.webhook else None,
        "tags": req.tags,
        # Region policy beyond the preferred ``region`` (services/regions.py)
        "placement": {
            "regions_allowed": list(req.regions_allowed or []),
            "spill_after_s": req.spill_after_s,
        },
    }
    request_id = log_context["request_id"].get()
    if request_id:  # the submit's X-Request-ID travels with the job to its runner
        request["request_id"] = request_id
    return JobRecord(
        id=job_id,
        tenant=p.tenant,
        model=req.model,
        model_version=req.model_version,
        pinned=req.model_version is not None,
        status="QUEUED",
        priority=req.priority,
        created_at=created,
        timeout_s=req.timeout_s,
        ttl_s=req.ttl_s,
        max_attempts=req.max_attempts,
        region=req.region,
        request=request,
    )


def leased_job(job: JobRecord) -> LeasedJob:
    """What a runner gets for a job it just leased. Every field comes from the stored
    record, validated at submit (``SubmitJobRequest``'s tensors, dumped) or written by the
    claim: the model is built without a second validation (``model_construct``, the types
    made explicit), once per leased job on the hot path."""
    assert job.lease_token and job.lease_expires_at and job.model_version
    outputs = job.request.get("outputs")
    return LeasedJob.model_construct(
        id=job.id,
        lease_token=job.lease_token,
        lease_expires_at=iso(job.lease_expires_at) or "",
        model=job.model,
        model_version=job.model_version,
        inputs=[Tensor.model_construct(**t) for t in job.request.get("inputs", [])],
        outputs=[OutputRequest.model_construct(**o) for o in outputs]
        if outputs is not None
        else None,
        parameters=job.request.get("parameters") or {},
        timeout_s=int(job.timeout_s),
        attempt=int(job.attempts),
        deadline_at=iso(job.deadline),
        input_urls={},
        outputs_upload=None,
        request_id=job.request.get("request_id"),
    )
