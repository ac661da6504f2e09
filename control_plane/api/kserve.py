"""KServe v2 / Triton HTTP endpoint, so ``tritonclient.http`` can point at the control plane.

    GET  /v2/health/live | /v2/health/ready          server liveness / storage reachability
    GET  /v2                                         server metadata
    GET  /v2/models/{model}[/versions/{v}]           model metadata of the READY version
    GET  /v2/models/{model}[/versions/{v}]/ready     200 if a READY version exists, else 404
    GET  /v2/models/{model}[/versions/{v}]/config    the version's config.pbtxt as JSON
    POST /v2/models/{model}[/versions/{v}]/infer     runs as a job through the queue, waits

Every route needs a bearer token (api-v1: every /v2 route; probes that cannot send one use
``/v1/health``). Errors on these routes use :class:`V2Error`: a top-level ``error`` message
string (what ``tritonclient`` raises ``InferenceServerException`` with) plus api-v1's
``code`` and ``details``; statuses follow api-v1 (404 ``model_not_found``, 504 ``timeout``…).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
from typing import Any

from gpufleet._logs import bind
from gpufleet.wire import (
    NAME_PATTERN,
    VERSION_PATTERN,
    ModelVersionView,
)
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from control_plane.api import jsonbody
from control_plane.api.context import Services, services
from control_plane.api.errors import STATUS_BY_CODE, failure_status, validation_details
from control_plane.api.http import send
from control_plane.api.kserve_binary import (
    BINARY_CONTENT_TYPE,
    HEADER_LENGTH,
    attach_binary_inputs,
    encode_response,
    header_size,
    split_body,
)
from control_plane.api.kserve_wire import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelConfig,
    V2ModelMetadata,
    V2ModelReady,
    V2OutputTensor,
    V2Ready,
    V2ServerMetadata,
    binary_selector,
    flatten,
    to_job_request,
    to_model_metadata,
)
from control_plane.api.routes_jobs import IDEMPOTENCY_HEADER, idempotency_key
from control_plane.api.routes_system import package_version
from control_plane.api.security import principal
from control_plane.api.spec import DocumentedRoute, Endpoint, route
from control_plane.errors import (
    GpufleetError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    RateLimited,
    Unavailable,
)
from control_plane.services.dispatch import InferenceFailed, RawRequest
from control_plane.services.inference import RawAnswer
from control_plane.services.principal import Principal

__all__ = [
    "ROUTES",
    "SHARED_MEMORY_MARKER",
    "JobOutcome",
    "job_outcome",
    "model_ref",
    "passthrough_body",
    "ready_version",
    "run_infer",
    "v2_error",
]

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
# FAILED jobs whose error code means "the request was wrong" answer 400, others 500.
_CLIENT_FAULTS = frozenset({"invalid_input", "invalid_request", "invalid_argument"})


class JobOutcome(GpufleetError):
    """An infer job that did not succeed (or not in time), with the status to answer."""

    def __init__(self, code: str, message: str, status: int, details: Any = None) -> None:
        super().__init__(message, details)
        self.code = code
        self.status = status


# --------------------------------------------------------------------------- errors


def v2_error_parts(exc: GpufleetError) -> tuple[int, bytes, dict[str, str] | None]:
    """The status, /v2 error body and extra headers (``Retry-After``) for a domain error."""
    status = exc.status if isinstance(exc, JobOutcome) else STATUS_BY_CODE.get(exc.code, 500)
    headers = (
        {"Retry-After": str(max(1, exc.retry_after))} if isinstance(exc, RateLimited) else None
    )
    body = V2Error(error=exc.message, code=exc.code, details=exc.details)
    return status, body.model_dump_json().encode(), headers


def v2_error(exc: GpufleetError) -> Response:
    """The /v2 error response for a domain error."""
    status, body, headers = v2_error_parts(exc)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def kserve_errors(endpoint: Endpoint) -> Endpoint:
    """Answer every failure of ``endpoint`` with a :class:`V2Error` body."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except GpufleetError as exc:
            if STATUS_BY_CODE.get(exc.code, 500) >= 500:
                log.warning("%s %s -> %s: %s", request.method, request.url.path, exc.code, exc)
            return v2_error(exc)
        except ValidationError as exc:
            details = validation_details(exc)
            first = f"{details[0]['field']}: {details[0]['message']}" if details else ""
            message = f"invalid request ({first})" if first else "invalid request"
            return v2_error(InvalidRequest(message, details=details))
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return v2_error(GpufleetError("internal error"))

    return wrapper


# --------------------------------------------------------------------------- server


async def server_live(request: Request) -> Response:
    principal(request)
    return send(V2Live())


async def server_ready(request: Request) -> Response:
    principal(request)
    checks = services(request).checks
    results = await asyncio.gather(
        *(run_in_threadpool(fn) for fn in checks.values()), return_exceptions=True
    )
    failed = [n for n, r in zip(checks, results, strict=True) if isinstance(r, BaseException)]
    if failed:
        raise Unavailable(f"storage unreachable: {', '.join(sorted(failed))}")
    return send(V2Ready())


async def server_metadata(request: Request) -> Response:
    principal(request)
    return send(V2ServerMetadata(version=package_version()))


# --------------------------------------------------------------------------- models


def model_ref(name: str, version: str | None) -> tuple[str, str | None]:
    """A model name and optional version from a KServe path (HTTP) or request (gRPC);
    anything that cannot name a model is ``ModelNotFound``, as Triton answers."""
    if not _NAME.fullmatch(name):
        raise ModelNotFound(f"model {name!r} not found")
    if version and not _VERSION.fullmatch(version):
        raise ModelNotFound(f"model {name!r} has no READY version {version}")
    return name, version or None


def _model_path(request: Request) -> tuple[str, str | None]:
    return model_ref(request.path_params["model"], request.path_params.get("version"))


async def ready_version(
    svc: Services, p: Principal, name: str, version: str | None
) -> tuple[ModelVersionView, list[str]]:
    """The pinned (else newest) READY version's view, and every READY version number."""
    name, version = model_ref(name, version)
    try:
        view = await run_in_threadpool(svc.models.get, p, name)
    except ModelNotFound:
        raise
    except NotFound as exc:
        raise ModelNotFound(exc.message) from exc
    ready = {v.version: v for v in view.versions if v.state == "READY"}
    numbers = sorted(ready, key=int)
    if version is not None:
        if version not in ready:
            raise ModelNotFound(f"model {name!r} has no READY version {version}")
        return ready[version], numbers
    if not numbers:
        raise ModelNotFound(f"model {name!r} has no READY version")
    return ready[numbers[-1]], numbers


async def _ready_version(request: Request, p: Principal) -> tuple[ModelVersionView, list[str]]:
    name, version = _model_path(request)
    return await ready_version(services(request), p, name, version)


async def model_metadata(request: Request) -> Response:
    version, numbers = await _ready_version(request, principal(request))
    return send(to_model_metadata(version, numbers))


async def model_ready(request: Request) -> Response:
    version, _ = await _ready_version(request, principal(request))
    return send(V2ModelReady(name=version.name, version=version.version))


async def model_config(request: Request) -> Response:
    version, _ = await _ready_version(request, principal(request))
    return JSONResponse({**version.config, "api_version": "v1"})


# --------------------------------------------------------------------------- infer


def _tensor_fields(t: Any) -> tuple[str, str, list[int], list[Any]]:
    if isinstance(t, dict):
        return t["name"], t["datatype"], t["shape"], t.get("data") or []
    return t.name, t.datatype, t.shape, t.data or []


async def run_infer(
    svc: Services,
    p: Principal,
    model: str,
    version: str | None,
    req: V2InferRequest,
    *,
    idempotency_key: str | None = None,
    on_submit: Any = None,
) -> V2InferResponse:
    """The KServe infer core shared by HTTP and gRPC: the KServe request → the inference
    service (dispatch or durable job) → the KServe response.

    Raises ``GpufleetError`` subclasses (``JobOutcome`` carries the status to answer)."""
    assert svc.inference is not None
    wait_s = svc.settings.infer_wait_s
    job = to_job_request(model, version, req, ttl_s=max(1, math.ceil(wait_s)))
    try:
        res = await svc.inference.infer_inline(
            p, job, idempotency_key=idempotency_key, on_submit=on_submit
        )
    except InferenceFailed as exc:
        raise job_outcome(exc) from exc
    outputs = []
    for t in res.outputs:  # inline: large job outputs were read from the bucket
        name, datatype, shape, data = _tensor_fields(t)
        outputs.append(
            V2OutputTensor(name=name, datatype=datatype, shape=shape, data=flatten(data))
        )
    return V2InferResponse(
        model_name=res.model,
        model_version=res.version,
        id=req.id,
        parameters={"job_id": res.job_id} if res.job_id else None,
        outputs=outputs,
    )


# Parameters that make Triton read or write its shared memory: never passed through.
SHARED_MEMORY_MARKER = b"shared_memory_region"


def job_outcome(exc: InferenceFailed) -> JobOutcome:
    """The status to answer for a model's refusal or failure (400 vs 500)."""
    return JobOutcome(exc.code, exc.message, failure_status(exc), exc.details)


async def passthrough_body(
    svc: Services,
    p: Principal,
    model: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    content_type: str | None,
) -> RawAnswer | None:
    """The caller's body straight to a runner and Triton (see services/inference.py), or
    None when it must be parsed here: no runner connected here passes HTTP through, or the
    body names shared memory (that needs a look inside). A compressed body never comes here.
    Also the short path's (``kserve_fast.py``)."""
    if svc.inference is None:
        return None
    model, version = model_ref(model, version)
    size = header_size(body, header_length)
    head = body if size is None else body[:size]
    if jsonbody.depth_exceeds(head):  # Triton's parser is not asked to survive it either
        raise InvalidRequest(f"JSON nests deeper than {jsonbody.MAX_DEPTH} levels", "body")
    if SHARED_MEMORY_MARKER in head:
        return None
    meta: dict[str, Any] = {}
    if size is not None:
        meta["header_length"] = size
    if content_type:
        meta["content_type"] = content_type
    try:
        return await svc.inference.passthrough(
            p, model, version, "http", lambda _m, _v: RawRequest("http", body, meta)
        )
    except InferenceFailed as exc:
        raise job_outcome(exc) from exc


async def infer(request: Request) -> Response:
    p = principal(request)
    p.require("jobs:write")  # before the body is looked at: 403, not a 422, for a viewer
    svc = services(request)
    model, version = _model_path(request)
    bind(model=model)  # log lines about this request name the model (then the job)
    body = await request.body()
    headers = request.headers
    if IDEMPOTENCY_HEADER.lower() not in headers and "content-encoding" not in headers:
        answer = await passthrough_body(
            svc,
            p,
            model,
            version,
            body,
            headers.get(HEADER_LENGTH),
            headers.get("content-type"),
        )
        if answer is not None:
            length = answer.meta.get("header_length")
            return Response(
                answer.body,
                media_type=answer.meta.get("content_type") or "application/json",
                headers=None if length is None else {HEADER_LENGTH: str(length)},
            )
    doc, blob = split_body(body, request.headers.get(HEADER_LENGTH))
    attach_binary_inputs(doc, blob)
    req = V2InferRequest.model_validate(doc, strict=True)
    key = idempotency_key(request)
    submitted = request.app.state.metrics.jobs_submitted
    result = await run_infer(
        svc,
        p,
        model,
        version,
        req,
        idempotency_key=key,
        on_submit=lambda m: submitted.labels(m).inc(),
    )
    body, header_length = encode_response(
        result.model_dump(mode="json", exclude_none=True), binary_selector(req)
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body, media_type=BINARY_CONTENT_TYPE, headers={HEADER_LENGTH: str(header_length)}
    )


# --------------------------------------------------------------------------- table

_MODEL = "/v2/models/{model}"
_VERSIONED = "/v2/models/{model}/versions/{version}"
_INFER_HEADERS = {
    HEADER_LENGTH: "Binary tensor extension: length of the JSON header; raw tensor bytes "
    "follow (inputs with parameters.binary_data_size, in order).",
    IDEMPOTENCY_HEADER: "Same key + same body within 24 h reuses the same job.",
}


def _model_routes(
    suffix: str, method: str, endpoint: Endpoint, summary: str, **kw: Any
) -> list[DocumentedRoute]:
    wrapped = kserve_errors(endpoint)
    kw = {"scope": "", "error": V2Error, **kw}  # infer checks its scope inside kserve_errors
    return [
        route(method, _MODEL + suffix, wrapped, summary + " (newest READY version)", **kw),
        route(method, _VERSIONED + suffix, wrapped, summary + " (a pinned version)", **kw),
    ]


ROUTES: list[DocumentedRoute] = [
    route(
        "GET",
        "/v2/health/live",
        kserve_errors(server_live),
        "KServe v2 server live (bearer auth; unauthenticated probes: /v1/health)",
        V2Live,
        error=V2Error,
    ),
    route(
        "GET",
        "/v2/health/ready",
        kserve_errors(server_ready),
        "KServe v2 server ready: tables and bucket reachable (503 otherwise)",
        V2Ready,
        error=V2Error,
    ),
    route(
        "GET",
        "/v2",
        kserve_errors(server_metadata),
        "KServe v2 server metadata",
        V2ServerMetadata,
        error=V2Error,
    ),
    *_model_routes("", "GET", model_metadata, "KServe v2 model metadata", response=V2ModelMetadata),
    *_model_routes(
        "/ready",
        "GET",
        model_ready,
        "KServe v2 model ready: 200 if a READY version exists, else 404",
        response=V2ModelReady,
    ),
    *_model_routes(
        "/config",
        "GET",
        model_config,
        "Triton model configuration (config.pbtxt as JSON)",
        response=V2ModelConfig,
    ),
    *_model_routes(
        "/infer",
        "POST",
        infer,
        "KServe v2 inference: runs as a job through the queue and waits (504 after "
        "infer_wait_s); JSON or Triton's binary tensor extension (application/octet-stream)",
        response=V2InferResponse,
        request=V2InferRequest,
        headers=_INFER_HEADERS,
    ),
]
