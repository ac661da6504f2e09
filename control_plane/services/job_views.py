"""Conversions between job records and wire types (views, leased jobs, new records)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from gpufleet._logs import context as log_context
from gpufleet.wire import (
    ErrorInfo,
    JobRequest,
    JobView,
    LeasedJob,
    OutputRequest,
    ResultUpload,
    Tensor,
)
from pydantic import BaseModel

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
    started, finished, info = job.started_at, job.finished_at, job.run_info
    queue_ms = int((started - job.created_at) * 1000) if started is not None else None
    request = job.request
    placement = request.get("placement") or {}
    return JobView(
        id=job.id,
        status=job.status,
        model=job.model,
        model_version=job.model_version,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        created_at=iso(job.created_at) or "",
        started_at=None if started is None else iso(started),
        finished_at=None if finished is None else iso(finished),
        queue_ms=queue_ms,
        run_ms=job.run_ms,
        runner_id=job.runner_id,
        region=job.region,
        regions_allowed=placement.get("regions_allowed") or None,
        spill_after_s=placement.get("spill_after_s"),
        tags=request.get("tags") or {},
        outputs=outputs,
        outputs_url=url,
        error=ErrorInfo(**job.error) if job.error else None,
        **(_run_fields(info) if info else {}),
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


_M = TypeVar("_M", bound=BaseModel)
_set = object.__setattr__


class _Construct:
    """``cls.model_construct(**values)`` for one model class with a few Python calls instead
    of several per field (pydantic's loop): the same ``__dict__`` (in field order), fields set,
    no extra and no private values. Only for plain models (no aliases, extra, private
    attributes or post-init); ``values`` must name every field that is required or has a
    default other than None (else, or naming an unknown field: pydantic's own)."""

    __slots__ = ("_cls", "_fast", "_names", "_needed", "_template")

    def __init__(self, cls: type[_M]) -> None:
        fields = cls.__pydantic_fields__
        self._cls = cls
        self._names = frozenset(fields)
        self._needed = frozenset(
            n
            for n, f in fields.items()
            if f.is_required() or f.default is not None or f.default_factory is not None
        )
        self._template = dict.fromkeys(fields)  # every field, in order, None
        self._fast = (
            not cls.__pydantic_root_model__
            and not cls.__pydantic_post_init__
            and not cls.__private_attributes__
            and cls.model_config.get("extra") != "allow"
            and all(f.alias is None and f.validation_alias is None for f in fields.values())
        )

    def __call__(self, values: dict[str, Any]) -> Any:
        keys = values.keys()
        if not (self._fast and keys <= self._names and self._needed <= keys):
            return self._cls.model_construct(**values)
        m = self._cls.__new__(self._cls)
        fields = self._template.copy()
        fields.update(values)
        _set(m, "__dict__", fields)
        _set(m, "__pydantic_fields_set__", set(keys))
        _set(m, "__pydantic_extra__", None)
        _set(m, "__pydantic_private__", None)
        return m


_tensor = _Construct(Tensor)
_output_request = _Construct(OutputRequest)
_leased_job = _Construct(LeasedJob)


LeaseUrls = Callable[[JobRecord, str, list[Tensor]], tuple[dict[str, str], "ResultUpload | None"]]
"""``PayloadService.lease_urls``: the input URLs and the outputs upload of a lease."""


def leased_job(job: JobRecord, urls: LeaseUrls | None = None) -> LeasedJob:
    """What a runner gets for a job it just leased. Every field comes from the stored
    record, validated at submit (``SubmitJobRequest``'s tensors, dumped) or written by the
    claim: the model is built without a second validation (``model_construct``'s result, the
    types made explicit, by ``_Construct``), once per leased job on the hot path. ``urls``:
    its input URLs and outputs upload (else none), built into it rather than set after."""
    assert job.lease_token and job.lease_expires_at and job.model_version
    outputs = job.request.get("outputs")
    inputs = [_tensor(t) for t in job.request.get("inputs", [])]
    input_urls, upload = ({}, None) if urls is None else urls(job, job.lease_token, inputs)
    leased: LeasedJob = _leased_job(
        {
            "id": job.id,
            "lease_token": job.lease_token,
            "lease_expires_at": iso(job.lease_expires_at) or "",
            "model": job.model,
            "model_version": job.model_version,
            "inputs": inputs,
            "outputs": [_output_request(o) for o in outputs] if outputs is not None else None,
            "parameters": job.request.get("parameters") or {},
            "timeout_s": int(job.timeout_s),
            "attempt": int(job.attempts),
            "deadline_at": iso(job.deadline),
            "input_urls": input_urls,
            "outputs_upload": upload,
            "request_id": job.request.get("request_id"),
        }
    )
    return leased
