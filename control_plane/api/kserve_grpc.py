"""KServe v2 over gRPC (Triton's ``GRPCInferenceService``), so ``tritonclient.grpc`` can point
at the control plane unchanged but for the bearer token in its ``headers=`` (gRPC metadata
``authorization: Bearer <token>``).

Each RPC parses the protobuf, calls the same transport-free core as the HTTP routes in
``kserve.py`` (``run_infer``, ``services.models.get``) and serialises the answer:

    ServerLive | ServerReady | ServerMetadata      bearer auth like GET /v2/health/*, GET /v2
    ModelReady | ModelMetadata | ModelConfig       the pinned (else newest) READY version
    ModelInfer                                     passed through to a runner connected here
                                                   (services/inference.py), else
                                                   V2InferRequest -> run_infer -> raw outputs
    everything else (stream infer, repository, shared memory, statistics, trace, log)
                                                   UNIMPLEMENTED

As Triton answers: ``ServerReady`` and ``ModelReady`` report ``ready=false`` (not an error)
when storage is unreachable or no such READY version exists; inputs come from ``contents``
or ``raw_input_contents`` and outputs go back as ``raw_output_contents``. Domain error codes
map to gRPC status codes in :data:`STATUS_BY_CODE`; the status message is the error's message.

    server = KServeGrpcServer(services, "0.0.0.0", 8001)
    port = await server.start()      # in the event loop that serves it
    ...
    await server.stop(grace_s=5.0)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError
from gpufleet._logs import context as _log_context
from gpufleet.tensors import dtype_of
from gpufleet.wire import NAME_PATTERN, VERSION_PATTERN, ModelVersionView
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from control_plane.api.context import Services
from control_plane.api.errors import validation_details
from control_plane.api.grpc_h2 import GrpcH2Server, Method
from control_plane.api.kserve import (
    SHARED_MEMORY_MARKER,
    JobOutcome,
    job_outcome,
    model_ref,
    ready_version,
    run_infer,
)
from control_plane.api.kserve_binary import decode_raw, encode_raw
from control_plane.api.kserve_wire import (
    EXTENSIONS,
    SERVER_NAME,
    V2InferRequest,
    V2InferResponse,
    to_model_metadata,
)
from control_plane.api.request_id import new_request_id, request_id_of
from control_plane.api.routes_system import package_version
from control_plane.errors import (
    GpufleetError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    Unauthorized,
)
from control_plane.services.dispatch import InferenceFailed, RawRequest
from control_plane.services.principal import Principal

__all__ = ["STATUS_BY_CODE", "KServeGrpcServer", "grpc_status"]

log = logging.getLogger(__name__)

_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_INT32_MAX = 2**31 - 1

S = grpc.StatusCode
STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    "invalid_request": S.INVALID_ARGUMENT,
    "not_found": S.NOT_FOUND,
    "model_not_found": S.NOT_FOUND,
    "unauthorized": S.UNAUTHENTICATED,
    "forbidden": S.PERMISSION_DENIED,
    "rate_limited": S.RESOURCE_EXHAUSTED,
    "payload_too_large": S.RESOURCE_EXHAUSTED,  # what gRPC itself answers for a too-big message
    "unavailable": S.UNAVAILABLE,
    "timeout": S.DEADLINE_EXCEEDED,
    "conflict": S.ABORTED,
    "cancelled": S.ABORTED,
}
# A FAILED job's own code (e.g. ``triton_error``) is not in the table: JobOutcome's status says
# whether the request (400) or the model (500) was at fault.
_STATUS_BY_HTTP = {
    400: S.INVALID_ARGUMENT,
    404: S.NOT_FOUND,
    409: S.ABORTED,
    504: S.DEADLINE_EXCEEDED,
}

# datatype -> the InferTensorContents field that carries it (FP16 / BF16: raw only)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Every RPC of GRPCInferenceService that gpufleet does not serve, and why.
_UNIMPLEMENTED = {
    "ModelStreamInfer": "streaming inference is not supported; use ModelInfer",
    "ModelStatistics": "model statistics are not served; see the control plane's /metrics",
    "RepositoryIndex": "the model repository is managed through /v1/models",
    "RepositoryModelLoad": "models are placed through PUT /v1/models/{name}/deployment",
    "RepositoryModelUnload": "models are placed through PUT /v1/models/{name}/deployment",
    "SystemSharedMemoryStatus": "shared memory is not supported by a remote control plane",
    "SystemSharedMemoryRegister": "shared memory is not supported by a remote control plane",
    "SystemSharedMemoryUnregister": "shared memory is not supported by a remote control plane",
    "CudaSharedMemoryStatus": "shared memory is not supported by a remote control plane",
    "CudaSharedMemoryRegister": "shared memory is not supported by a remote control plane",
    "CudaSharedMemoryUnregister": "shared memory is not supported by a remote control plane",
    "TraceSetting": "trace settings are not served by the control plane",
    "LogSettings": "log settings are not served by the control plane",
}


def grpc_status(exc: GpufleetError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    code = STATUS_BY_CODE.get(exc.code)
    if code is not None:
        return code
    if isinstance(exc, JobOutcome):
        return _STATUS_BY_HTTP.get(exc.status, S.INTERNAL)
    return S.INTERNAL


# --------------------------------------------------------------------------- errors

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """End every failure of ``handler`` with a gRPC status and the error's message."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        # x-request-id as over HTTP: the caller's (when safe) or a new one, on this call's
        # log lines (and the job's, on its runner) and back in the trailing metadata
        given = _call_metadata(context.invocation_metadata()).request_id
        rid = new_request_id() if given is None else request_id_of(given)
        _RID.set(rid)
        _TENANT.set(None)
        _JOB.set(None)
        _RUNNER.set(None)
        _MODEL.set(None)
        context.set_trailing_metadata((("x-request-id", rid),))
        try:
            return await handler(self, request, context)
        except GpufleetError as exc:
            failure: GpufleetError = exc
        except ValidationError as exc:
            details = validation_details(exc)
            first = f"{details[0]['field']}: {details[0]['message']}" if details else ""
            failure = InvalidRequest(f"invalid request ({first})" if first else "invalid request")
        except Exception:
            log.exception("unhandled error in %s", handler.__name__)
            failure = GpufleetError("internal error")
        status = grpc_status(failure)
        if status in (S.INTERNAL, S.UNAVAILABLE, S.DEADLINE_EXCEEDED):
            log.warning("%s -> %s: %s", handler.__name__, failure.code, failure.message)
        trailers = (
            (("retry-after", str(max(1, failure.retry_after))),)
            if isinstance(failure, RateLimited)
            else ()
        ) + (("x-request-id", rid),)
        await context.abort(status, failure.message, trailers)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper


# the log context a call binds (gpufleet._logs.bind's variables, set directly: per call)
_RID, _TENANT, _JOB, _RUNNER, _MODEL = (
    _log_context[name] for name in ("request_id", "tenant", "job", "runner", "model")
)


class _CallMetadata:
    """What the servicer reads of a call's metadata: the client's x-request-id and the
    bearer token (or why there is none)."""

    __slots__ = ("refusal", "request_id", "token")

    def __init__(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        given = dict(metadata).get("x-request-id")
        self.request_id = given if isinstance(given, (str, bytes)) else None
        header = next((v for k, v in metadata if k == "authorization"), None)
        self.token = ""
        self.refusal = ""
        if not header:
            self.refusal = "missing bearer token"
            return
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.refusal = "expected 'authorization: Bearer <token>' metadata"
            return
        self.token = token.strip()


# by the metadata tuple: a client sends the same metadata call after call (gpufleet's
# server even hands over the same tuple); bounded (tokens are no bigger than a header block)
_METADATA: dict[Any, _CallMetadata] = {}
_MAX_METADATA = 64


def _call_metadata(metadata: Any) -> _CallMetadata:
    metadata = tuple(metadata or ())
    try:
        known = _METADATA.get(metadata)
    except TypeError:  # a value that cannot be hashed: not kept
        return _CallMetadata(metadata)
    if known is None:
        known = _CallMetadata(metadata)
        if len(_METADATA) >= _MAX_METADATA:
            _METADATA.clear()
        _METADATA[metadata] = known
    return known


def _unimplemented(name: str, why: str) -> Callable[..., Awaitable[None]]:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(S.UNIMPLEMENTED, f"{name} is not implemented by gpufleet: {why}")

    handler.__name__ = name
    return handler


# --------------------------------------------------------------------------- codec


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


_FRONTEND_PARAMETERS = frozenset({"triton_enable_empty_final_response"})


def _params(entries: Any) -> dict[str, Any] | None:
    """An ``InferParameter`` map as plain values (None when empty)."""
    return {k: _param_value(v) for k, v in entries.items()} if entries else None


def _contents_data(t: Any, index: int) -> list[Any]:
    """The flat values of an input sent in ``contents``."""
    field = _CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise InvalidRequest(
            f"input {t.name!r}: {t.datatype} tensors must be sent in raw_input_contents",
            field=f"inputs[{index}].contents",
        )
    present = [f.name for f, _ in t.contents.ListFields()]
    if any(name != field for name in present):
        raise InvalidRequest(
            f"input {t.name!r}: a {t.datatype} tensor's values go in contents.{field}",
            field=f"inputs[{index}].contents",
        )
    values = getattr(t.contents, field)
    count = math.prod(t.shape)
    if len(values) != count:
        raise InvalidRequest(
            f"input {t.name!r}: {len(values)} values do not fill shape {list(t.shape)}",
            field=f"inputs[{index}].contents",
        )
    if t.datatype != "BYTES":
        return list(values)
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"input {t.name!r}: BYTES elements must be UTF-8 text (jobs carry tensors as JSON)",
            field=f"inputs[{index}].contents",
        ) from exc


def _raw_data(t: Any, raw: bytes, index: int) -> list[Any]:
    """The flat values of an input sent in ``raw_input_contents`` (as the HTTP binary form)."""
    try:
        dtype = dtype_of(t.datatype)
    except ValueError as exc:
        raise InvalidRequest(
            f"input {t.name!r}: unsupported datatype {t.datatype!r}",
            field=f"inputs[{index}].datatype",
        ) from exc
    if t.datatype != "BYTES" and len(raw) != math.prod(t.shape) * dtype.itemsize:
        raise InvalidRequest(
            f"input {t.name!r}: {len(raw)} bytes do not hold shape {list(t.shape)} of {t.datatype}",
            field=f"raw_input_contents[{index}]",
        )
    return decode_raw(raw, t.datatype, list(t.shape), t.name)


def to_v2_request(request: Any) -> V2InferRequest:
    """The ``V2InferRequest`` (what the HTTP route parses) of a ``ModelInferRequest``."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: when used, "
            "raw_input_contents holds one entry per input, in order",
            field="raw_input_contents",
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        if raw:
            if t.HasField("contents"):
                raise InvalidRequest(
                    f"input {t.name!r} has contents while raw_input_contents is used",
                    field=f"inputs[{i}].contents",
                )
            data = _raw_data(t, raw[i], i)
        else:
            data = _contents_data(t, i)
        item: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "datatype": t.datatype,
            "data": data,
        }
        if t.parameters:
            item["parameters"] = _params(t.parameters)
        inputs.append(item)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id:
        doc["id"] = request.id
    if request.parameters:
        # Parameters Triton's own gRPC front end consumes (clients such as perf_analyzer
        # always send them); forwarded, Triton would refuse them as reserved.
        doc["parameters"] = _params(
            {k: v for k, v in request.parameters.items() if k not in _FRONTEND_PARAMETERS}
        )
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": _params(o.parameters)}
            if o.parameters
            else {"name": o.name}
            for o in request.outputs
        ]
    return V2InferRequest.model_validate(doc)


def _set_param(target: Any, value: Any) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def to_infer_response(result: V2InferResponse, wanted: Iterable[str]) -> Any:
    """A ``ModelInferResponse`` with every output's bytes in ``raw_output_contents`` (as
    Triton answers); only the ``wanted`` outputs when any are named."""
    names = set(wanted)
    out = service_pb2.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id or ""
    )
    for key, value in (result.parameters or {}).items():
        _set_param(out.parameters[key], value)
    raw = out.raw_output_contents
    for t in result.outputs:
        if names and t.name not in names:
            continue
        out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        raw.append(encode_raw(t.data or [], t.datatype))
    return out


# --------------------------------------------------------------------------- servicer


def _peer_host(peer: str | None) -> str | None:
    """The client address of a gRPC peer (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) for failure
    throttling; None when it is not an IP peer."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """``GRPCInferenceService`` on the control plane's services (see the module docstring)."""

    def __init__(self, services: Services, on_submit: Callable[[str], None] | None) -> None:
        self._svc = services
        self._on_submit = on_submit

    async def _principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller of the ``authorization: Bearer <token>`` metadata, as HTTP verifies it."""
        known = _call_metadata(context.invocation_metadata())
        if known.refusal:
            raise Unauthorized(known.refusal)
        token = known.token
        # no thread hop when known (and its API key's state read within seconds: revocation)
        remembered = self._svc.auth.cached_principal(token)
        if remembered is not None:
            return remembered
        return await asyncio.to_thread(
            self._svc.auth.authenticate, token, client=_peer_host(context.peer())
        )

    async def _ready_version(
        self, p: Principal, name: str, pinned: str
    ) -> tuple[ModelVersionView, list[str]]:
        """The pinned (else newest) READY version, and every READY version number."""
        return await ready_version(self._svc, p, name, pinned)

    # ------------------------------------------------------------------ server
    @_rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._principal(context)
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._principal(context)
        checks = self._svc.checks
        results = await asyncio.gather(
            *(asyncio.to_thread(fn) for fn in checks.values()), return_exceptions=True
        )
        failed = sorted(n for n, r in zip(checks, results, strict=True) if isinstance(r, Exception))
        if failed:
            log.warning("ServerReady: storage unreachable: %s", ", ".join(failed))
        return service_pb2.ServerReadyResponse(ready=not failed)

    @_rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._principal(context)
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=package_version(), extensions=EXTENSIONS
        )

    # ------------------------------------------------------------------ models
    @_rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = await self._principal(context)
        try:
            await self._ready_version(p, request.name, request.version)
        except ModelNotFound:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @_rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = await self._principal(context)
        meta = to_model_metadata(*await self._ready_version(p, request.name, request.version))
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
        )

    @_rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        p = await self._principal(context)
        version, _ = await self._ready_version(p, request.name, request.version)
        config = json_format.ParseDict(
            version.config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True
        )
        return service_pb2.ModelConfigResponse(config=config)

    # ------------------------------------------------------------------ infer
    @_rpc
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``request``: the serialized ModelInferRequest (the servers here register this
        method without a deserializer) or the message. A passed-through answer goes back as
        the runner's bytes (bytes are sent as they are), without a parse and a serialize."""
        if isinstance(request, bytes):
            raw = request
            try:
                request = service_pb2.ModelInferRequest.FromString(raw)
            except DecodeError as exc:
                raise GpufleetError("the request is not a valid ModelInferRequest") from exc
        else:
            raw = request.SerializeToString()
        p = await self._principal(context)
        model, version = _model_ref(request.model_name, request.model_version)
        _MODEL.set(model)  # log lines about this call name the model (then the job)
        # Shared memory is never passed through; a marker in tensor data only costs the
        # parsed path (as over HTTP).
        if self._svc.inference is not None and SHARED_MEMORY_MARKER not in raw:

            def build(name: str, resolved: str) -> RawRequest:
                return RawRequest("grpc", raw + _model_fields(name, resolved))

            try:
                answer = await self._svc.inference.passthrough(p, model, version, "grpc", build)
            except InferenceFailed as exc:
                raise job_outcome(exc) from exc
            if answer is not None:
                return answer.body
        req = to_v2_request(request)
        result = await run_infer(self._svc, p, model, version, req, on_submit=self._on_submit)
        return to_infer_response(result, (o.name for o in request.outputs))


def _string_field(number: int, value: str) -> bytes:
    """One length-delimited protobuf field (``number``, a string) in wire format."""
    data = value.encode()
    out = bytearray()
    for v in ((number << 3) | 2, len(data)):
        while v > 0x7F:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out) + data


def with_model(raw: bytes, name: str, version: str) -> bytes:
    """A serialized ``ModelInferRequest`` naming ``name`` version ``version``: the two
    fields (1 and 2) appended, which a parser takes over earlier values ("last one wins" for
    singular fields in the protobuf encoding), so the request is not serialized again."""
    return raw + _model_fields(name, version)


# (name, version) -> its fields 1 and 2, and a KServe request's (model_name, model_version)
# -> model_ref's answer: the few models a process serves, worked out once
_MODEL_FIELDS: dict[tuple[str, str], bytes] = {}
_MODEL_REFS: dict[tuple[str, str], tuple[str, str | None]] = {}
_MAX_MODELS = 256


def _model_fields(name: str, version: str) -> bytes:
    key = (name, version)
    known = _MODEL_FIELDS.get(key)
    if known is None:
        known = _string_field(1, name) + _string_field(2, version)
        if len(_MODEL_FIELDS) >= _MAX_MODELS:
            _MODEL_FIELDS.clear()
        _MODEL_FIELDS[key] = known
    return known


def _model_ref(name: str, version: str) -> tuple[str, str | None]:
    """``model_ref`` of a request's names (ModelNotFound when they name no model)."""
    key = (name, version)
    known = _MODEL_REFS.get(key)
    if known is None:
        known = model_ref(name, version)  # raises for a bad name: nothing kept
        if len(_MODEL_REFS) >= _MAX_MODELS:
            _MODEL_REFS.clear()
        _MODEL_REFS[key] = known
    return known


for _name, _why in _UNIMPLEMENTED.items():
    setattr(InferenceServicer, _name, _unimplemented(_name, _why))


# --------------------------------------------------------------------------- server


class KServeGrpcServer:
    """The gRPC KServe v2 endpoint of one control-plane process, on its own port.

    ``start()`` and ``stop()`` run in the event loop that serves the calls (the app's).
    ``on_submit(model)`` is called once per job an infer queues (the HTTP side counts
    ``jobs_submitted`` with it). Served by gpufleet's own HTTP/2 server (``grpc_h2.py``;
    TLS with ``ssl_context``) unless ``grpc_server=grpcio`` or only grpcio ``credentials``
    are given (grpcio's aio server).
    """

    def __init__(
        self,
        services: Services,
        host: str,
        port: int,
        *,
        on_submit: Callable[[str], None] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # TLS (control_plane.tls): grpcio's credentials or, for gpufleet's own server, an
        # SSLContext that negotiates h2; both None: plaintext
        self._credentials = credentials
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._servicer = InferenceServicer(services, on_submit)
        self._max_receive = services.settings.max_body_bytes
        self._own = services.settings.grpc_server == "gpufleet" and (
            credentials is None or ssl_context is not None
        )
        self._server: grpc.aio.Server | None = None
        self._h2: GrpcH2Server | None = None

    async def start(self) -> int:
        """Bind and serve; the bound port (a free one when constructed with port 0)."""
        if self._server is not None or self._h2 is not None:
            raise RuntimeError("the gRPC server is already started")
        if self._own:
            return await self._start_own()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_receive),
                ("grpc.max_send_message_length", _INT32_MAX),
                ("grpc.so_reuseport", 0),  # a port already taken fails here, not silently
            ]
        )
        server.add_generic_rpc_handlers((grpcio_handler(self._servicer),))
        address = (
            f"[{self._host}]:{self._port}" if ":" in self._host else f"{self._host}:{self._port}"
        )
        try:
            if self._credentials is not None:
                bound = server.add_secure_port(address, self._credentials)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind the gRPC server to {address}: {exc}") from exc
        if bound == 0:
            raise RuntimeError(f"cannot bind the gRPC server to {address}")
        await server.start()
        self._server = server
        log.info("KServe gRPC listening on %s:%d", self._host, bound)
        return int(bound)

    async def _start_own(self) -> int:
        """gpufleet's HTTP/2 server (``grpc_h2.py``) on the servicer's methods."""
        h2 = GrpcH2Server(servicer_methods(self._servicer), max_receive=self._max_receive)
        try:
            bound = await h2.start(self._host, self._port, ssl_context=self._ssl_context)
        except OSError as exc:
            address = f"{self._host}:{self._port}"
            raise RuntimeError(f"cannot bind the gRPC server to {address}: {exc}") from exc
        self._h2 = h2
        tls = "TLS" if self._ssl_context is not None else "plaintext"
        log.info("KServe gRPC listening on %s:%d (gpufleet's server, %s)", self._host, bound, tls)
        return bound

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish for up to ``grace_s``, then close."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace_s)
        h2, self._h2 = self._h2, None
        if h2 is not None:
            await h2.stop(grace_s)


_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
_RAW_METHODS = frozenset({"ModelInfer"})  # handlers that take the request's bytes


def _raw(data: bytes) -> bytes:
    return data


def _serialize(message: Any) -> bytes:
    """A response message's bytes; bytes (a passed-through answer) as they are."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def servicer_methods(servicer: Any) -> dict[str, Method]:
    """Every RPC of ``GRPCInferenceService`` by path, on ``servicer``'s methods (for
    ``grpc_h2``)."""
    methods = {}
    for m in _SERVICE.methods:
        parse: Callable[[bytes], Any] = (
            _raw
            if m.name in _RAW_METHODS
            else message_factory.GetMessageClass(m.input_type).FromString
        )
        methods[f"/{_SERVICE.full_name}/{m.name}"] = Method(
            handler=getattr(servicer, m.name),
            parse=parse,
            streaming=m.client_streaming or m.server_streaming,
        )
    return methods


def grpcio_handler(servicer: Any) -> grpc.GenericRpcHandler:
    """The same methods for grpcio's server (``ModelInfer`` without a deserializer)."""
    handlers = {}
    for m in _SERVICE.methods:
        handler = getattr(servicer, m.name)
        parse = (
            None
            if m.name in _RAW_METHODS
            else message_factory.GetMessageClass(m.input_type).FromString
        )
        if m.client_streaming and m.server_streaming:
            handlers[m.name] = grpc.stream_stream_rpc_method_handler(
                handler, request_deserializer=parse, response_serializer=_serialize
            )
        elif m.client_streaming or m.server_streaming:  # pragma: no cover - none in this service
            raise RuntimeError(f"unexpected streaming shape of {m.name}")
        else:
            handlers[m.name] = grpc.unary_unary_rpc_method_handler(
                handler, request_deserializer=parse, response_serializer=_serialize
            )
    return grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers)
