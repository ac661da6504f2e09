"""KServe v2 (Triton HTTP) bodies, and their translation to and from gpufleet jobs.

Pure functions and pydantic models: no Starlette, no I/O. The routes in ``kserve.py`` parse
with these models, build a :class:`JobRequest` with :func:`to_job_request` and answer with
:func:`to_infer_response`.

Every body also carries ``"api_version": "v1"`` (api-v1 convention); KServe clients ignore
fields they do not know. Errors carry a top-level ``"error"`` *string* (what KServe v2 and
``tritonclient`` read) next to the api-v1 ``code`` and ``details``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from gpufleet.wire import (
    Datatype,
    JobRequest,
    JobView,
    ModelVersionView,
    OutputRequest,
    Response,
    Strict,
    Tensor,
    TensorSpec,
)
from pydantic import Field

from control_plane.api.kserve_binary import BINARY_PARAMETERS
from control_plane.errors import InvalidRequest

SERVER_NAME = "gpufleet"
EXTENSIONS = ["binary_tensor_data"]


# --------------------------------------------------------------------------- requests


class V2InferInput(Strict):
    """One input tensor: ``data`` inline, or raw bytes (``parameters.binary_data_size``)."""

    name: str = Field(min_length=1, max_length=256)
    shape: list[int] = Field(max_length=16)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(Strict):
    """An output to return; ``parameters.binary_data`` asks for it in binary."""

    name: str = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class V2InferRequest(Strict):
    """``POST /v2/models/{model}[/versions/{v}]/infer`` (JSON header of a binary body)."""

    api_version: Literal["v1"] = "v1"
    id: str | None = Field(default=None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[V2InferInput] = Field(min_length=1, max_length=64)
    outputs: list[V2RequestedOutput] | None = Field(default=None, max_length=64)


# --------------------------------------------------------------------------- responses


class V2OutputTensor(Strict):
    """An output tensor: flat ``data``, or ``parameters.binary_data_size`` when binary."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(Response):
    """The inference response; ``parameters.job_id`` names the gpufleet job that ran it."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2OutputTensor]


class V2ServerMetadata(Response):
    name: str = SERVER_NAME
    version: str
    extensions: list[str] = Field(default_factory=lambda: list(EXTENSIONS))


class V2ModelMetadata(Response):
    """Inputs and outputs of the READY version (``-1`` as the batch dimension)."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class V2Live(Response):
    live: bool = True


class V2Ready(Response):
    ready: bool = True


class V2ModelReady(Response):
    name: str
    version: str
    ready: bool = True


class V2ModelConfig(Response):
    """The version's ``config.pbtxt`` as JSON (protobuf field names, as Triton answers)."""

    model_config = {"extra": "allow"}


class V2Error(Response):
    """Error body of every /v2 route: ``error`` is the message (KServe v2 / tritonclient),
    ``code`` and ``details`` as in api-v1's ``error`` object."""

    error: str
    code: str
    details: Any = None


# --------------------------------------------------------------------------- translation


def _without_binary(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    kept = {k: v for k, v in params.items() if k not in BINARY_PARAMETERS}
    return kept or None


def to_job_request(model: str, version: str | None, req: V2InferRequest, ttl_s: int) -> JobRequest:
    """The gpufleet job of an inference request (binary inputs already decoded).

    The binary extension's parameters stay here; every other request, input and output
    parameter goes to the job as it is. ``ttl_s`` bounds how long the job may wait queued.
    """
    tensors = []
    for i, t in enumerate(req.inputs):
        if t.data is None:
            raise InvalidRequest(f"input {t.name!r} has no data", field=f"inputs[{i}].data")
        tensors.append(
            Tensor(
                name=t.name,
                datatype=t.datatype,
                shape=t.shape,
                data=t.data,
                parameters=_without_binary(t.parameters),
            )
        )
    outputs = (
        [OutputRequest(name=o.name, parameters=_without_binary(o.parameters)) for o in req.outputs]
        if req.outputs
        else None
    )
    return JobRequest(
        model=model,
        model_version=version,
        inputs=tensors,
        outputs=outputs,
        parameters=_without_binary(req.parameters) or {},
        ttl_s=ttl_s,
    )


def binary_selector(req: V2InferRequest) -> Callable[[str], bool]:
    """Which outputs go in binary: the output's ``binary_data`` parameter, else the request's
    ``binary_data_output`` (Triton's rule)."""
    default = bool((req.parameters or {}).get("binary_data_output", False))
    per_output = {
        o.name: bool(o.parameters["binary_data"])
        for o in req.outputs or []
        if o.parameters and "binary_data" in o.parameters
    }
    return lambda name: per_output.get(name, default)


def flatten(data: list[Any]) -> list[Any]:
    """Row-major flat values of flat or nested data."""
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out


def to_infer_response(
    view: JobView, request_id: str | None, outputs: list[Tensor]
) -> V2InferResponse:
    """The KServe v2 response of a SUCCEEDED job."""
    return V2InferResponse(
        model_name=view.model,
        model_version=view.model_version or "",
        id=request_id,
        parameters={"job_id": view.id},
        outputs=[
            V2OutputTensor(
                name=t.name,
                datatype=t.datatype,
                shape=t.shape,
                data=flatten(t.data or []),
            )
            for t in outputs
        ],
    )


def to_model_metadata(version: ModelVersionView, versions: list[str]) -> V2ModelMetadata:
    """KServe model metadata of a READY version."""
    return V2ModelMetadata(
        name=version.name,
        versions=versions,
        platform=version.platform or "",
        inputs=version.inputs,
        outputs=version.outputs,
    )
