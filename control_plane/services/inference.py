"""Synchronous inference, transport-free: the one core behind KServe v2 HTTP, KServe v2 gRPC
and ``POST /v1/models/{model}/infer``.

Two paths, chosen per call:

0. **passthrough** (:meth:`InferenceService.passthrough`, KServe HTTP and gRPC): the dispatch
   path below with the caller's KServe bytes handed to the runner and Triton untouched (no
   tensor is parsed here; Triton validates). Taken when a runner connected here serves the
   version and speaks the protocol; otherwise the caller parses the request and calls
   :meth:`InferenceService.infer`.
1. **dispatch** (services/dispatch.py): a runner connected to this replica serves the READY
   version → the request goes to it in memory and the answer comes back on the same call. No
   table is written; Triton's semantics (at most once per attempt; 503 when the runner is
   lost, the SDK retries). A v1 call whose tensors all have a JSON-exact datatype (not
   FP16/BF16/BYTES), with no tensor parameters and no reserved request parameter, goes as
   the KServe v2 JSON request it maps to, passed through like 0. (the runner decodes
   nothing; Triton's JSON outputs are v1 tensors); others go as structured frames the
   runner decodes (``_as_kserve_json``).
2. **job** (the durable queue): no such runner here (its runners are connected to another
   replica, or this is Lambda), an ``Idempotency-Key`` was given, or an input is a
   ``data_ref`` payload → submit a job, wait for it (``infer_wait_s``), return its outputs.

Failures raise domain errors: ``InferenceFailed`` (the model refused or failed; its
``client_fault`` tells 400 from 500), ``Timeout`` (504), ``Unavailable`` (503),
``RateLimited`` (429), ``ModelNotFound``, ``InvalidRequest`` (tensors that do not fit).

KServe answers carry every output inline (:meth:`InferenceService.infer_inline`): outputs a
job left in the bucket are read back through the blob store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpufleet._logs import bind
from gpufleet.tensors import decode_outputs, to_tensor
from gpufleet.wire import TERMINAL_STATUSES, JobRequest, JobView

from control_plane.errors import NotFound, Timeout, Unavailable
from control_plane.services.dispatch import (
    ANYWHERE,
    Dispatcher,
    InferenceFailed,
    Placement,
    RawRequest,
)
from control_plane.services.principal import Principal
from control_plane.services.regions import RegionService
from control_plane.settings import Settings
from control_plane.storage.protocols import BlobStore

__all__ = [
    "InferResult",
    "InferenceFailed",
    "InferenceService",
    "RawAnswer",
    "RawRequest",
]


@dataclass
class InferResult:
    """Outputs of one inference (Tensor dicts or models) and how it ran."""

    model: str
    version: str
    outputs: list[Any]  # Tensor, or its JSON dict (dispatch answers are not re-validated)
    path: str  # "dispatch" | "job"
    job_id: str | None = None
    runner_id: str | None = None
    timings: dict[str, float] | None = None
    # Large job outputs stay in the bucket: a presigned URL instead of ``outputs`` (v1 hands
    # the URL on; KServe must answer inline: ``infer_inline`` reads them from the bucket).
    outputs_url: str | None = None


_ANSWER_META = ("header_length", "content_type", "content_encoding")


@dataclass
class RawAnswer:
    """Triton's answer to a passthrough request: its bytes and how to frame them."""

    model: str
    version: str
    body: bytes
    meta: dict[str, Any]  # header_length, content_type, content_encoding (HTTP)
    runner_id: str | None = None


class InferenceService:
    """See the module docstring. ``jobs`` is the job service (submit, wait, ready records);
    ``blobs`` the bucket large job outputs are read back from."""

    def __init__(
        self,
        jobs: Any,
        dispatch: Dispatcher | None,
        settings: Settings,
        blobs: BlobStore,
        regions: RegionService | None = None,
    ) -> None:
        self._jobs = jobs
        self._regions = regions  # region defaults of KServe calls (None: anywhere)
        self.dispatch = dispatch
        self._settings = settings
        self._blobs = blobs

    async def infer(
        self,
        p: Principal,
        req: JobRequest,
        *,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
        on_submit: Any = None,
    ) -> InferResult:
        wait_s = timeout_s or self._settings.infer_wait_s
        req = await self._with_regions(p, req)
        d = self.dispatch
        if (
            d is not None
            and idempotency_key is None
            and all(t.data_ref is None for t in req.inputs)
        ):
            rec = self._jobs.infer_target(p, req, cached_only=True)
            if rec is None:
                rec = await self._jobs.offload(self._jobs.infer_target, p, req)
            where = Placement(req.region, frozenset(req.regions_allowed or ()))
            if _as_kserve_json(req, rec.outputs) and d.routable(
                rec.name, rec.version, "http", where
            ):
                return await self._as_kserve(d, rec.name, rec.version, req, wait_s, where)
            if d.routable(rec.name, rec.version, where=where):
                payload: dict[str, Any] = {
                    "inputs": [t.model_dump(exclude_none=True) for t in req.inputs],
                    "parameters": req.parameters,
                }
                if req.outputs:
                    payload["outputs"] = [o.model_dump(exclude_none=True) for o in req.outputs]
                msg = await d.infer(rec.name, rec.version, payload, wait_s, where)
                return InferResult(
                    model=rec.name,
                    version=rec.version,
                    outputs=msg.get("outputs") or [],
                    path="dispatch",
                    runner_id=msg.get("runner_id"),
                    timings=msg.get("timings"),
                )
        return await self._durable(p, req, wait_s, idempotency_key, on_submit)

    async def _as_kserve(
        self,
        d: Dispatcher,
        model: str,
        version: str,
        req: JobRequest,
        wait_s: float,
        where: Placement,
    ) -> InferResult:
        """A v1 call dispatched as the KServe v2 JSON request it maps to, passed through to
        Triton by the runner: the runner decodes no tensor (no client library, no arrays),
        and Triton's JSON outputs are v1 tensors as they are."""
        inputs = []
        for t in req.inputs:
            data = t.data or []
            item: dict[str, Any] = {
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "data": _flatten(data) if data and isinstance(data[0], list) else data,
            }
            inputs.append(item)
        doc: dict[str, Any] = {"inputs": inputs}
        if req.outputs:
            doc["outputs"] = [{"name": o.name} for o in req.outputs]
        if req.parameters:
            doc["parameters"] = req.parameters
        body = json.dumps(doc, separators=(",", ":")).encode()
        msg = await d.infer(model, version, RawRequest("http", body), wait_s, where)
        try:
            answer = json.loads(msg.get("body") or b"")
            outputs = answer["outputs"]
            if not isinstance(outputs, list):
                raise TypeError("outputs is not a list")
        except (ValueError, TypeError, KeyError) as exc:
            why = f"Triton's answer is not readable: {exc}"
            raise InferenceFailed("triton_error", why) from exc
        return InferResult(
            model=model,
            version=version,
            outputs=outputs,
            path="dispatch",
            runner_id=msg.get("runner_id"),
            timings=msg.get("timings"),
        )

    async def infer_inline(
        self,
        p: Principal,
        req: JobRequest,
        *,
        idempotency_key: str | None = None,
        on_submit: Any = None,
    ) -> InferResult:
        """:meth:`infer` with every output inline (what KServe answers): outputs the job
        left in the bucket are read through the blob store."""
        res = await self.infer(p, req, idempotency_key=idempotency_key, on_submit=on_submit)
        if res.outputs_url is not None:
            res.outputs = await self._jobs.offload(self._stored_outputs, p, res.job_id)
            res.outputs_url = None
        return res

    def _stored_outputs(self, p: Principal, job_id: str) -> list[Any]:
        """A job's outputs from the bucket, as tensors; ``Unavailable`` when they cannot be
        read (gone, truncated, not decodable)."""
        try:
            ref = self._jobs.outputs_ref(p, job_id)
            size = self._blobs.head(ref) if ref else None
            if ref is None or size is None:
                raise NotFound(f"the stored outputs of job {job_id} are gone")
            arrays = decode_outputs(self._blobs.get_bytes(ref, limit=size))
        except (NotFound, ValueError) as exc:
            raise Unavailable(f"could not read the outputs of job {job_id}: {exc}") from exc
        return [to_tensor(name, array) for name, array in arrays.items()]

    async def passthrough(
        self,
        p: Principal,
        model: str,
        version: str | None,
        protocol: str,
        build: Callable[[str, str], RawRequest],
    ) -> RawAnswer | None:
        """Send a KServe request untouched to a runner connected here that serves the READY
        version and passes ``protocol`` through; None when there is none (the caller then
        parses the request and calls :meth:`infer`). ``build(model, version)`` makes the
        request once the version is resolved (gRPC names it in the message)."""
        d = self.dispatch
        if d is None:
            return None
        rec = self._jobs.ready_target(p, model, version, cached_only=True)
        if rec is None:
            rec = await self._jobs.offload(self._jobs.ready_target, p, model, version)
        where = self.placement_of(p, rec.name, cached_only=True)
        if where is None:
            where = await self._jobs.offload(self.placement_of, p, rec.name)
        assert where is not None
        if not d.routable(rec.name, rec.version, protocol, where):
            return None
        request = build(rec.name, rec.version)
        msg = await d.infer(rec.name, rec.version, request, self._settings.infer_wait_s, where)
        return RawAnswer(
            model=rec.name,
            version=rec.version,
            body=msg.get("body") or b"",
            meta={k: msg[k] for k in _ANSWER_META if msg.get(k) is not None},
            runner_id=msg.get("runner_id"),
        )

    async def _with_regions(self, p: Principal, req: JobRequest) -> JobRequest:
        """``req`` with its region defaults (off the event loop only when a store read is
        due: the hot path stays on it)."""
        regions = self._regions
        if regions is None:
            return req
        out: JobRequest
        if regions.resolves_without_io(req.model):
            out = self._jobs.with_regions(p, req)
        else:
            out = await self._jobs.offload(self._jobs.with_regions, p, req)
        return out

    def placement_of(
        self, p: Principal, model: str, *, cached_only: bool = False
    ) -> Placement | None:
        """Where a KServe call (no region fields of its own) of ``p`` may run: its tenant's
        and the deployment's region defaults (docs/regions.md). ``cached_only``: None
        instead of a store read."""
        regions = self._regions
        if regions is None:
            return ANYWHERE
        if cached_only and not regions.resolves_without_io(model):
            return None
        preferred, allowed = regions.defaults(p.tenant, model, key_id=None if p.external else p.sub)
        if preferred is None and not allowed:
            return ANYWHERE
        return Placement(preferred, frozenset(allowed))

    # ------------------------------------------------------------------ durable path
    async def _durable(
        self,
        p: Principal,
        req: JobRequest,
        wait_s: float,
        idempotency_key: str | None,
        on_submit: Any,
    ) -> InferResult:
        view, created = await self._jobs.offload(self._jobs.submit, p, req, idempotency_key)
        bind(job=view.id)  # the request's later lines name its job
        if created and on_submit is not None:
            on_submit(req.model)
        view = await self._wait(p, view.id, wait_s)
        if view.status != "SUCCEEDED":
            raise outcome_error(view, wait_s)
        return InferResult(
            model=view.model,
            version=view.model_version or "",
            outputs=view.outputs or [],
            outputs_url=view.outputs_url if view.outputs is None else None,
            path="job",
            job_id=view.id,
            runner_id=view.runner_id,
        )

    async def _wait(self, p: Principal, job_id: str, wait_s: float) -> JobView:
        """Wait up to ``wait_s`` for the job, in long polls of at most ``max_wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()
            view: JobView = await self._jobs.wait(
                p, job_id, max(0.0, min(left, self._settings.max_wait_s))
            )
            if view.status in TERMINAL_STATUSES or deadline - time.monotonic() <= 0:
                return view


# Datatypes whose values Triton reads and writes as JSON exactly as the runner's client
# library would (FP16/BF16 have no JSON form in Triton; BYTES may hold non-text).
JSON_EXACT = frozenset(
    {"BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
    | {"FP32", "FP64"}
)


# Request parameters the structured path's client library refuses (it sets them itself):
# such a call keeps that path, so its answer does not change with the path taken.
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
    | {"binary_data_output"}
)


def _as_kserve_json(req: JobRequest, outputs: list[dict[str, Any]]) -> bool:
    """Whether ``req`` may go to Triton as KServe JSON and mean what the structured path
    sends: every input and every output of the version (``outputs``, from its config) of a
    JSON-exact datatype, no tensor parameters (the structured path sends none: no
    shared-memory or binary-data parameters reach Triton), no reserved request parameter."""
    return (
        all(
            t.datatype in JSON_EXACT and t.data is not None and not t.parameters for t in req.inputs
        )
        and all(o.get("datatype") in JSON_EXACT for o in outputs)
        and not any(o.parameters for o in req.outputs or ())
        and not any(
            k in RESERVED_PARAMETERS or k.startswith("triton_") for k in req.parameters or {}
        )
    )


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major flat values of nested data."""
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def outcome_error(view: JobView, wait_s: float) -> Exception:
    """Why a job gives no outputs: FAILED, TIMED_OUT / not done in time, CANCELLED."""
    details = {"job_id": view.id, "status": view.status}
    err = view.error
    if view.status == "FAILED":
        code = err.code if err else "failed"
        message = err.message if err else f"job {view.id} failed"
        return InferenceFailed(code, message, details)
    if view.status == "TIMED_OUT":
        message = f"job {view.id} timed out" + (f": {err.message}" if err else "")
        return Timeout(message, details)
    if view.status == "CANCELLED":
        return InferenceFailed("cancelled", f"job {view.id} was cancelled", details)
    return Timeout(
        f"job {view.id} did not finish within {wait_s:g}s (it is {view.status}); "
        f"GET /v1/jobs/{view.id} returns its result later",
        details,
    )
