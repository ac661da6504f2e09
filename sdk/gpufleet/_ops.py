"""API operations other than the model repository, written once as effect generators
(see :mod:`gpufleet._transport`) and driven by both clients."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx
import numpy as np

from gpufleet._transport import Core, Op, seg
from gpufleet.errors import (
    APIError,
    GpufleetError,
    JobFailedError,
    WaitTimeoutError,
    mark_submit_error,
)
from gpufleet.tensors import (
    datatype_of,
    decode_outputs,
    dtype_of,
    to_arrays,
    to_raw_bytes,
    to_tensor,
)
from gpufleet.wire import (
    TERMINAL_STATUSES,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyRotate,
    ApiKeyRotated,
    BatchAccepted,
    BatchJobRequest,
    InferRequest,
    InferResponse,
    JobAccepted,
    JobList,
    JobLogs,
    JobRequest,
    JobView,
    JoinTokenCheck,
    JoinTokenCheckRequest,
    JoinTokenCreate,
    JoinTokenCreated,
    JoinTokenList,
    KeyLimits,
    KeyLimitsSpec,
    ModelView,
    OutputRequest,
    PayloadUpload,
    PayloadUploadRequest,
    PoolList,
    PoolSpec,
    PoolView,
    QuotaList,
    QuotaSpec,
    QuotaView,
    RegionDefaultsList,
    RegionDefaultsSpec,
    RegionDefaultsView,
    RunnerConfigPatch,
    RunnerList,
    RunnerView,
    Tensor,
    WebhookSecret,
    WebhookSpec,
)

#: Inputs whose JSON would exceed this go through a presigned upload (api-v1 "Jobs").
INLINE_LIMIT_BYTES = 256 * 1024
#: The server's upper bound on ``wait_s``.
MAX_WAIT_S = 30.0
log = logging.getLogger("gpufleet")

Inputs = Mapping[str, Any] | Iterable[Tensor]


def _dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_none=True))


# --------------------------------------------------------------------------- payloads


def upload_payload(core: Core, data: bytes) -> Op[str]:
    """Upload raw bytes through ``POST /v1/payloads``; returns the ``data_ref``."""
    body = _dump(PayloadUploadRequest(size=len(data)))
    resp = yield from core.request("POST", "/v1/payloads", json=body, idempotent=False)
    target = PayloadUpload.model_validate(resp.json())
    put = httpx.Request(target.method, target.url, content=data, headers=target.headers)
    yield from core.send_external(put)
    return target.ref


def encode_inputs(core: Core, inputs: Inputs, inline_limit: int) -> Op[list[Tensor]]:
    """Wire tensors for ``inputs``; arrays too large to inline are uploaded (``data_ref``)."""
    if not isinstance(inputs, Mapping):
        tensors = list(inputs)
        if not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("inputs must be a mapping of name -> array or a list of Tensor")
        return tensors
    out: list[Tensor] = []
    budget = inline_limit  # the server's limit counts the JSON of all inline tensors together
    for name, value in inputs.items():
        if isinstance(value, Tensor):
            out.append(value)
            budget -= len(value.model_dump_json(exclude_none=True))
            continue
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        datatype = datatype_of(array)
        tensor = None
        if array.nbytes <= budget:
            try:
                tensor = to_tensor(name, array, datatype)
            except ValueError:  # BYTES that are not UTF-8 cannot be JSON: they travel raw
                tensor = None
        size = len(tensor.model_dump_json(exclude_none=True)) if tensor is not None else 0
        if tensor is not None and size <= budget:
            budget -= size
        else:
            ref = yield from upload_payload(core, to_raw_bytes(array, datatype))
            tensor = Tensor(
                name=name,
                datatype=datatype,  # type: ignore[arg-type]
                shape=[int(d) for d in array.shape],
                data_ref=ref,
            )
        out.append(tensor)
    return out


# --------------------------------------------------------------------------- casting

DECLARED_TTL_S = 60.0  # how long a model's declared input datatypes are reused
_NUMPY_DEFAULTS = frozenset({np.dtype(np.float64), np.dtype(np.int64)})


def _needs_cast(value: Any) -> bool:
    """A list, or an array of numpy's default dtypes: what often differs from the model."""
    if isinstance(value, Tensor):
        return False
    if isinstance(value, np.ndarray):
        return value.dtype in _NUMPY_DEFAULTS
    return isinstance(value, list | tuple | int | float)


def declared_datatypes(core: Core, model: str, version: str | None) -> Op[dict[str, str]]:
    """Input name -> datatype the model declares (the pinned version, else the newest READY
    one); empty when the model cannot be read (the control plane then says why at submit).
    Reused for ``DECLARED_TTL_S`` per client."""
    cache = core.declared
    hit = cache.get((model, version))
    if hit is not None and core.clock() - hit[0] < DECLARED_TTL_S:
        return hit[1]
    try:
        resp = yield from core.request("GET", f"/v1/models/{seg(model)}")
    except APIError:
        return {}
    view = ModelView.model_validate(resp.json())
    ready = [v for v in view.versions if v.state == "READY"]
    chosen = [v for v in ready if v.version == version] if version else ready[:1]
    found = {t.name: t.datatype for t in chosen[0].inputs} if chosen else {}
    cache[(model, version)] = (core.clock(), found)
    return found


def cast_inputs(inputs: Mapping[str, Any], declared: Mapping[str, str]) -> dict[str, Any]:
    """Lists and float64/int64 arrays cast to the datatype the model declares when no value
    changes; ValueError naming the input when the cast would lose something."""
    out = dict(inputs)
    for name, value in inputs.items():
        target = declared.get(name)
        if target is None or target == "BYTES" or not _needs_cast(value):
            continue
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        want = dtype_of(target)
        if array.dtype == want or array.dtype.kind not in "biuf":
            continue
        with np.errstate(all="ignore"):
            cast = array.astype(want)
            back = cast.astype(array.dtype)
            same = np.array_equal(back, array, equal_nan=array.dtype.kind == "f")
        if not same:
            raise ValueError(
                f"input {name}: the model takes {target}, and these {array.dtype} values do "
                f"not fit it without loss; cast them yourself (e.g. .astype(np.{want}))"
            )
        out[name] = cast
    return out


def _cast(core: Core, model: str, version: str | None, inputs: Inputs) -> Op[Inputs]:
    if not isinstance(inputs, Mapping) or not any(_needs_cast(v) for v in inputs.values()):
        return inputs
    declared = yield from declared_datatypes(core, model, version)
    return cast_inputs(inputs, declared)


# --------------------------------------------------------------------------- jobs


def job_request(
    core: Core,
    model: str,
    inputs: Inputs,
    *,
    model_version: str | None = None,
    outputs: Iterable[str] | None = None,
    priority: int = 0,
    timeout_s: int | None = None,
    ttl_s: int | None = None,
    max_attempts: int | None = None,
    region: str | None = None,
    webhook: str | Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    inline_limit: int = INLINE_LIMIT_BYTES,
    regions_allowed: Iterable[str] | None = None,
    spill_after_s: float | None = None,
) -> Op[JobRequest]:
    """Validate and encode one job body (uploading large inputs)."""
    inputs = yield from _cast(core, model, model_version, inputs)
    tensors = yield from encode_inputs(core, inputs, inline_limit)
    fields: dict[str, Any] = {
        "model": model,
        "model_version": model_version,
        "inputs": tensors,
        "priority": priority,
        "region": region if region is not None else core.region,
        "regions_allowed": list(regions_allowed)
        if regions_allowed is not None
        else core.regions_allowed,
        "spill_after_s": spill_after_s,
        "tags": dict(tags or {}),
        "parameters": dict(parameters or {}),
    }
    if outputs is not None:
        fields["outputs"] = [OutputRequest(name=n) for n in outputs]
    if timeout_s is not None:
        fields["timeout_s"] = timeout_s
    if ttl_s is not None:
        fields["ttl_s"] = ttl_s
    if max_attempts is not None:
        fields["max_attempts"] = max_attempts
    if webhook is not None:
        spec = {"url": webhook} if isinstance(webhook, str) else dict(webhook)
        fields["webhook"] = WebhookSpec.model_validate(spec)
    return JobRequest(**fields)


def submit(
    core: Core, req: JobRequest, idempotency_key: str | None, wait: float | None = None
) -> Op[JobView]:
    """``POST /v1/jobs`` with an Idempotency-Key (generated when not given), so retries
    after a lost answer return the same job instead of making another. ``wait``: send
    ``Prefer: wait=N`` and return the job as the server has it after up to N seconds
    (terminal, with outputs, when it finished in time)."""
    key = idempotency_key or str(uuid.uuid4())
    headers = {"Idempotency-Key": key}
    if wait is not None:
        headers["Prefer"] = f"wait={max(0.0, wait):g}"
    resp = yield from _keyed(
        core.request(
            "POST",
            "/v1/jobs",
            json=_dump(req),
            headers=headers,
            idempotent=True,
            timeout=core.timeout + (wait or 0.0),
        ),
        key,
    )
    doc = resp.json()
    if wait is not None and "model" in doc:  # the server applied the preference
        return JobView.model_validate(doc)
    accepted = JobAccepted.model_validate(doc)
    return JobView(
        id=accepted.id,
        status=accepted.status,
        model=req.model,
        model_version=req.model_version,
        priority=req.priority,
        max_attempts=req.max_attempts,
        created_at=accepted.created_at,
        region=req.region,
        tags=req.tags,
    )


def infer(
    core: Core,
    model: str,
    inputs: Inputs,
    version: str | None,
    timeout: float | None,
    outputs: Iterable[str] | None = None,
    parameters: Mapping[str, Any] | None = None,
    region: str | None = None,
    regions_allowed: Iterable[str] | None = None,
) -> Op[dict[str, np.ndarray[Any, Any]]]:
    """``POST /v1/models/{model}/infer``: synchronous inference, answered on the call.

    Retried on 503 and connection errors (inference is safe to repeat: a runner lost
    mid-request answers 503); a failed inference raises the API error (400 for inputs the
    model refuses, 500 for a model error, 504 past ``timeout``)."""
    inputs = yield from _cast(core, model, version, inputs)
    tensors = yield from encode_inputs(core, inputs, INLINE_LIMIT_BYTES)
    body = InferRequest(
        model_version=version,
        inputs=tensors,
        outputs=[OutputRequest(name=n) for n in outputs] if outputs is not None else None,
        parameters=dict(parameters or {}),
        timeout_s=min(timeout, 3600.0) if timeout else None,
        region=region if region is not None else core.region,
        regions_allowed=list(regions_allowed)
        if regions_allowed is not None
        else core.regions_allowed,
    )
    resp = yield from core.request(
        "POST",
        f"/v1/models/{seg(model)}/infer",
        json=_dump(body),
        idempotent=True,
        timeout=core.timeout + (timeout or 0.0),
    )
    out = InferResponse.model_validate(resp.json())
    if out.outputs_url is not None:  # large outputs of a job: straight from the bucket
        stored = yield from core.send_external(httpx.Request("GET", out.outputs_url))
        return decode_outputs(stored.content)
    return to_arrays(out.outputs)


def submit_batch(
    core: Core, reqs: list[JobRequest], idempotency_key: str | None = None
) -> Op[list[str]]:
    """``POST /v1/jobs/batch`` with an Idempotency-Key (generated when not given): a retry
    returns the same ids and stores whatever a failed first attempt left out."""
    key = idempotency_key or str(uuid.uuid4())
    body = _dump(BatchJobRequest(jobs=reqs))
    resp = yield from _keyed(
        core.request(
            "POST", "/v1/jobs/batch", json=body, headers={"Idempotency-Key": key}, idempotent=True
        ),
        key,
    )
    return BatchAccepted.model_validate(resp.json()).ids


def _keyed(op: Op[httpx.Response], key: str) -> Op[httpx.Response]:
    """``op``, its error marked with the Idempotency-Key and whether the job may exist."""
    try:
        return (yield from op)
    except GpufleetError as exc:
        raise mark_submit_error(exc, key) from exc.__cause__


def get(core: Core, job_id: str, wait_s: float = 0.0) -> Op[JobView]:
    params = {"wait_s": f"{wait_s:g}"} if wait_s > 0 else None
    resp = yield from core.request(
        "GET", f"/v1/jobs/{seg(job_id)}", params=params, timeout=core.timeout + wait_s
    )
    return JobView.model_validate(resp.json())


def logs(core: Core, job_id: str) -> Op[JobLogs]:
    resp = yield from core.request("GET", f"/v1/jobs/{seg(job_id)}/logs")
    return JobLogs.model_validate(resp.json())


#: ``progress(job, elapsed_s)``: called while :func:`wait` waits, after each poll.
WaitProgress = Callable[[JobView, float], None]


def wait(
    core: Core,
    job_id: str,
    timeout: float | None,
    poll: float,
    progress: WaitProgress | None = None,
) -> Op[JobView]:
    """Long-poll ``GET /v1/jobs/{id}?wait_s=…`` until the job is terminal. While it waits,
    ``progress(job, elapsed_s)`` is called after every poll, and a change of status or
    ``waiting_reason`` is logged (logger ``gpufleet``, INFO)."""
    started = core.clock()
    deadline = None if timeout is None else started + timeout
    poll = max(0.0, min(poll, MAX_WAIT_S))
    said: tuple[str, str | None] | None = None
    while True:
        remaining = None if deadline is None else max(0.0, deadline - core.clock())
        wait_s = poll if remaining is None else min(poll, remaining)
        job = yield from get(core, job_id, wait_s)
        if job.status in TERMINAL_STATUSES:
            return job
        elapsed = core.clock() - started
        if (job.status, job.waiting_reason) != said:
            said = (job.status, job.waiting_reason)
            log.info(
                "job %s %s after %.0fs%s",
                job.id,
                job.status,
                elapsed,
                f": {job.waiting_reason}" if job.waiting_reason else "",
            )
        if progress is not None:
            progress(job, elapsed)
        if deadline is not None and core.clock() >= deadline:
            raise WaitTimeoutError(job, timeout or 0.0)


def cancel(core: Core, job_id: str) -> Op[JobView]:
    resp = yield from core.request("POST", f"/v1/jobs/{seg(job_id)}/cancel", idempotent=False)
    return JobView.model_validate(resp.json())


def list_page(
    core: Core,
    status: str | None,
    model: str | None,
    limit: int,
    cursor: str | None,
) -> Op[JobList]:
    params = {"status": status, "model": model, "limit": str(limit), "cursor": cursor}
    resp = yield from core.request("GET", "/v1/jobs", params=params)
    return JobList.model_validate(resp.json())


def outputs_of(core: Core, job: JobView) -> Op[dict[str, np.ndarray[Any, Any]]]:
    """The outputs of a finished job as arrays (fetched from ``outputs_url`` when stored in
    the bucket); :class:`JobFailedError` unless it SUCCEEDED."""
    if job.status != "SUCCEEDED":
        raise JobFailedError(job)
    if job.outputs is not None:
        return to_arrays(job.outputs)
    if job.outputs_url is None:
        return {}
    resp = yield from core.send_external(httpx.Request("GET", job.outputs_url))
    return decode_outputs(resp.content)


# --------------------------------------------------------------------------- others


def list_runners(core: Core) -> Op[RunnerList]:
    resp = yield from core.request("GET", "/v1/runners")
    return RunnerList.model_validate(resp.json())


def configure_runner(core: Core, runner_id: str, patch: RunnerConfigPatch) -> Op[RunnerView]:
    body = patch.model_dump(mode="json", exclude_none=True)
    resp = yield from core.request(
        "PATCH", f"/v1/runners/{seg(runner_id)}/config", json=body, idempotent=True
    )
    return RunnerView.model_validate(resp.json())


def revoke_runner(core: Core, runner_id: str) -> Op[dict[str, Any]]:
    resp = yield from core.request("DELETE", f"/v1/runners/{seg(runner_id)}")
    return dict(resp.json())


def create_api_key(core: Core, tenant: str, role: str, name: str) -> Op[ApiKeyCreated]:
    body = _dump(ApiKeyCreate(tenant=tenant, role=role, name=name))  # type: ignore[arg-type]
    resp = yield from core.request("POST", "/v1/admin/api-keys", json=body, idempotent=False)
    return ApiKeyCreated.model_validate(resp.json())


def list_api_keys(core: Core) -> Op[ApiKeyList]:
    resp = yield from core.request("GET", "/v1/admin/api-keys")
    return ApiKeyList.model_validate(resp.json())


def revoke_api_key(core: Core, key_id: str) -> Op[dict[str, Any]]:
    resp = yield from core.request("DELETE", f"/v1/admin/api-keys/{seg(key_id)}")
    return dict(resp.json())


def rotate_api_key(core: Core, key_id: str, old_valid_for_s: int) -> Op[ApiKeyRotated]:
    body = _dump(ApiKeyRotate(old_valid_for_s=old_valid_for_s))
    resp = yield from core.request(
        "POST", f"/v1/admin/api-keys/{seg(key_id)}/rotate", json=body, idempotent=False
    )
    return ApiKeyRotated.model_validate(resp.json())


def create_join_token(
    core: Core,
    region: str,
    labels: Mapping[str, str] | None,
    expires_in_s: int,
    max_uses: int = 1,
) -> Op[JoinTokenCreated]:
    req = JoinTokenCreate(
        region=region, labels=dict(labels or {}), expires_in_s=expires_in_s, max_uses=max_uses
    )
    resp = yield from core.request(
        "POST", "/v1/admin/join-tokens", json=_dump(req), idempotent=False
    )
    return JoinTokenCreated.model_validate(resp.json())


def check_join_token(core: Core, join_token: str) -> Op[JoinTokenCheck]:
    req = JoinTokenCheckRequest(join_token=join_token)
    resp = yield from core.request(
        "POST", "/v1/runners/join-tokens/check", json=_dump(req), idempotent=True, auth=False
    )
    return JoinTokenCheck.model_validate(resp.json())


def put_pool(core: Core, name: str, spec: PoolSpec | Mapping[str, Any]) -> Op[PoolView]:
    body = _dump(spec if isinstance(spec, PoolSpec) else PoolSpec.model_validate(spec))
    resp = yield from core.request("PUT", f"/v1/pools/{seg(name)}", json=body)
    return PoolView.model_validate(resp.json())


def get_pool(core: Core, name: str) -> Op[PoolView]:
    resp = yield from core.request("GET", f"/v1/pools/{seg(name)}")
    return PoolView.model_validate(resp.json())


def list_pools(core: Core) -> Op[PoolList]:
    resp = yield from core.request("GET", "/v1/pools")
    return PoolList.model_validate(resp.json())


def pool_join_token(core: Core, name: str) -> Op[JoinTokenCreated]:
    resp = yield from core.request("POST", f"/v1/pools/{seg(name)}/join-token", idempotent=False)
    return JoinTokenCreated.model_validate(resp.json())


def delete_pool(core: Core, name: str) -> Op[dict[str, Any]]:
    resp = yield from core.request("DELETE", f"/v1/pools/{seg(name)}")
    return dict(resp.json())


def my_quota(core: Core) -> Op[QuotaView]:
    resp = yield from core.request("GET", "/v1/quotas")
    return QuotaView.model_validate(resp.json())


def get_quota(core: Core, tenant: str) -> Op[QuotaView]:
    resp = yield from core.request("GET", f"/v1/admin/tenants/{seg(tenant)}/quotas")
    return QuotaView.model_validate(resp.json())


def put_quota(core: Core, tenant: str, spec: QuotaSpec) -> Op[QuotaView]:
    resp = yield from core.request(
        "PUT", f"/v1/admin/tenants/{seg(tenant)}/quotas", json=_dump(spec)
    )
    return QuotaView.model_validate(resp.json())


def delete_quota(core: Core, tenant: str) -> Op[QuotaView]:
    resp = yield from core.request("DELETE", f"/v1/admin/tenants/{seg(tenant)}/quotas")
    return QuotaView.model_validate(resp.json())


def list_quotas(core: Core) -> Op[QuotaList]:
    resp = yield from core.request("GET", "/v1/admin/quotas")
    return QuotaList.model_validate(resp.json())


def set_key_limits(core: Core, key_id: str, max_priority: int | None) -> Op[KeyLimits]:
    body = KeyLimitsSpec(max_priority=max_priority).model_dump(mode="json")
    resp = yield from core.request("PUT", f"/v1/admin/api-keys/{seg(key_id)}/limits", json=body)
    return KeyLimits.model_validate(resp.json())


KEEP: Any = object()  # a ``set_region_defaults`` field not given


def _regions_path(tenant: str | None, key_id: str | None) -> str:
    if (tenant is None) == (key_id is None):
        raise ValueError("give exactly one of tenant= and key_id=")
    if tenant is not None:
        return f"/v1/admin/tenants/{seg(tenant)}/regions"
    return f"/v1/admin/api-keys/{seg(key_id or '')}/regions"


def get_region_defaults(
    core: Core, tenant: str | None, key_id: str | None
) -> Op[RegionDefaultsView]:
    resp = yield from core.request("GET", _regions_path(tenant, key_id))
    return RegionDefaultsView.model_validate(resp.json())


def put_region_defaults(
    core: Core, tenant: str | None, key_id: str | None, spec: RegionDefaultsSpec
) -> Op[RegionDefaultsView]:
    resp = yield from core.request("PUT", _regions_path(tenant, key_id), json=_dump(spec))
    return RegionDefaultsView.model_validate(resp.json())


def delete_region_defaults(
    core: Core, tenant: str | None, key_id: str | None
) -> Op[RegionDefaultsView]:
    resp = yield from core.request("DELETE", _regions_path(tenant, key_id))
    return RegionDefaultsView.model_validate(resp.json())


def list_region_defaults(core: Core) -> Op[RegionDefaultsList]:
    resp = yield from core.request("GET", "/v1/admin/regions")
    return RegionDefaultsList.model_validate(resp.json())


def region_spec(
    current: RegionDefaultsView, default_region: Any, regions_allowed: Any, keep: Any
) -> RegionDefaultsSpec:
    """The spec of a ``set``: the given fields over what is set now (``keep``: not given)."""
    return RegionDefaultsSpec(
        default_region=current.default_region if default_region is keep else default_region,
        regions_allowed=list(
            current.regions_allowed if regions_allowed is keep else regions_allowed or []
        ),
    )


def list_join_tokens(core: Core) -> Op[JoinTokenList]:
    resp = yield from core.request("GET", "/v1/admin/join-tokens")
    return JoinTokenList.model_validate(resp.json())


def revoke_join_token(core: Core, token_id: str) -> Op[dict[str, Any]]:
    resp = yield from core.request("DELETE", f"/v1/admin/join-tokens/{seg(token_id)}")
    return dict(resp.json())


def webhook_secret(core: Core) -> Op[str]:
    resp = yield from core.request("GET", "/v1/webhooks/secret")
    return WebhookSecret.model_validate(resp.json()).secret


def rotate_webhook_secret(core: Core) -> Op[str]:
    resp = yield from core.request("POST", "/v1/webhooks/secret/rotate", idempotent=False)
    return WebhookSecret.model_validate(resp.json()).secret
