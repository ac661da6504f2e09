"""Engine for a real Triton: tritonclient aio (gRPC by default, HTTP as an option).

Model-repository calls carry the restricted-API header. Concurrent ``infer`` calls stay
concurrent (one aio client), so Triton's dynamic batcher sees them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.backends.container_spec import REPOSITORY_KEY_HEADER
from runner.tensors import NP_DTYPES, from_numpy, to_numpy
from runner.triton_grpc import (
    GRPC_INVALID_ARGUMENT,
    GRPC_NOT_FOUND,
    GRPC_OK,
    GRPC_UNAVAILABLE,
    TritonGrpc,
    grpc_status_name,
)
from runner.triton_http import TritonHttp
from runner.triton_metrics import scrape_triton_metrics
from runner.triton_stream import build_request, stream_infer

log = logging.getLogger(__name__)
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
GRPC_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_B = HEADER_LENGTH.encode()
_HEADER_LENGTH_KEY = _HEADER_LENGTH_B.lower()  # as runner/triton_http.py keeps answer headers
# Content-Type header lines of passed-through requests, by content type (a handful in use).
_CONTENT_TYPE_LINES: dict[str, bytes] = {}

# gRPC status codes / error texts that mean "Triton is not there (right now)".
_TRANSIENT_MARKERS = (
    "UNAVAILABLE",
    "Connection refused",
    "connect",
    "Socket closed",
    "not found",  # unknown model: not (re)loaded yet after a restart
    "is not ready",
    "Server disconnected",
    "Stub process",
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, OSError)):
        return True
    try:
        import aiohttp

        if isinstance(exc, aiohttp.ClientConnectionError):
            return True
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        pass
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}" if hasattr(exc, "status") else str(exc)
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (vs. a cancelled gRPC call)."""
    task = asyncio.current_task()
    if task is None:
        return True
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else True


def _infer_error(exc: BaseException, timed_out: str) -> InferError | None:
    """The ``InferError`` a failed call to Triton raises (``timed_out``: the message of a
    timeout); None for what must propagate as it is (an ``InferError`` already, this task
    being cancelled, KeyboardInterrupt and the like)."""
    if isinstance(exc, InferError):
        return None
    if isinstance(exc, TimeoutError):
        return InferError(timed_out, transient=True)
    if isinstance(exc, asyncio.CancelledError):
        if _cancelling():
            return None
        # Not us: the channel was closed under the call (Triton restarted; reset()).
        return InferError("call cancelled by a Triton restart", transient=True)
    if isinstance(exc, Exception):
        return InferError(_message(exc), transient=_is_transient(exc))
    return None


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return str(text or type(exc).__name__)


class TritonClient:
    """``InferenceEngine`` over tritonclient's aio clients."""

    def __init__(
        self,
        *,
        protocol: str,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        repository_key: str,
        request_timeout_s: float = 10.0,
        load_timeout_s: float = 300.0,
    ) -> None:
        self.protocol = protocol
        self._http_port = http_port
        self._grpc_port = grpc_port
        self._metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._ready_url = f"http://127.0.0.1:{http_port}/v2/health/ready"
        # Triton checks the gRPC restricted-protocol header under a fixed prefix.
        header = (
            REPOSITORY_KEY_HEADER
            if protocol == "http"
            else GRPC_HEADER_PREFIX + REPOSITORY_KEY_HEADER
        )
        self._repo_headers = {header: repository_key}
        self._request_timeout_s = request_timeout_s
        self._load_timeout_s = load_timeout_s
        self._client: Any = None
        self._http = httpx.AsyncClient(timeout=request_timeout_s)
        self._http_base = f"http://127.0.0.1:{http_port}"
        # Passthrough (infer_raw): created on first use, in the loop that uses them.
        self._raw_session: TritonHttp | None = None
        self._raw_grpc_client: TritonGrpc | None = None
        # Streaming (ModelStreamInfer, runner/triton_stream.py) and decoupled flags per version.
        self._stream_channel: Any = None
        self._stream_call: Any = None
        self._decoupled: dict[tuple[str, str], bool] = {}

    def _triton(self) -> Any:
        if self._client is None:
            if self.protocol == "grpc":
                import tritonclient.grpc.aio as grpcclient

                self._client = grpcclient.InferenceServerClient(f"127.0.0.1:{self._grpc_port}")
            else:
                import tritonclient.http.aio as httpclient

                self._client = httpclient.InferenceServerClient(
                    f"127.0.0.1:{self._http_port}", conn_limit=1024, conn_timeout=10.0
                )
        return self._client

    def _module(self) -> Any:
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as grpcclient

            return grpcclient
        import tritonclient.http.aio as httpclient

        return httpclient

    async def server_ready(self) -> bool:
        try:
            resp = await self._http.get(self._ready_url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def _call(self, timeout_s: float, fn: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self._triton(), fn)(*args, **kwargs), timeout_s)
        except BaseException as exc:
            err = _infer_error(exc, f"{fn} timed out after {timeout_s:.0f}s")
            if err is None:
                raise
            raise err from exc

    async def load_model(self, name: str, config: str | None = None) -> None:
        """Load or reload; ``config`` (JSON) overrides the model's config.pbtxt."""
        await self._call(
            self._load_timeout_s, "load_model", name, headers=self._repo_headers, config=config
        )

    async def unload_model(self, name: str) -> None:
        await self._call(self._load_timeout_s, "unload_model", name, headers=self._repo_headers)

    async def model_memory_bytes(self, name: str, version: str) -> int | None:
        """GPU memory Triton's statistics report for one loaded version (``memory_usage``;
        None when the backend reports none)."""
        try:
            extra = {"as_json": True} if self.protocol == "grpc" else {}  # HTTP: always JSON
            stats = await self._call(
                self._request_timeout_s, "get_inference_statistics", name, version, **extra
            )
        except InferError:
            return None
        total = None
        for model in (stats or {}).get("model_stats", []):
            for usage in model.get("memory_usage", []) or []:
                if str(usage.get("type", "")).upper() == "GPU":
                    total = (total or 0) + int(usage.get("byte_size", 0))
        return total

    async def model_ready(self, name: str, version: str) -> bool:
        try:
            return bool(await self._call(self._request_timeout_s, "is_model_ready", name, version))
        except InferError:
            return False

    async def infer(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        """Structured inference (jobs, dispatched v1 calls). Sent as a KServe HTTP request
        with binary tensors over the runner's own keep-alive client (``_infer_binary``)
        when that carries exactly what the client library would; else through it."""
        request = _binary_request(inputs, outputs, parameters)
        if request is not None:
            return await self._infer_binary(model, version, request, timeout_s)
        return await self._infer_structured(model, version, inputs, outputs, parameters, timeout_s)

    async def _infer_binary(
        self, model: str, version: str, request: tuple[bytes, int], timeout_s: float
    ) -> list[Tensor]:
        """One ``POST …/infer`` with binary inputs and outputs (Triton's binary tensor
        extension): the bytes the gRPC client would put in ``raw_input_contents``, and the
        outputs decoded as it decodes ``raw_output_contents``. Errors as ``_call`` raises
        them (same messages, same transient split)."""
        body, header_length = request
        if self._raw_session is None:
            self._raw_session = TritonHttp("127.0.0.1", self._http_port)
        path = (
            f"/v2/models/{quote(model, safe='')}/versions/{quote(version, safe='')}/infer"
            if version
            else f"/v2/models/{quote(model, safe='')}/infer"
        )
        headers = {
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(header_length),
        }
        try:
            async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                resp = await self._raw_session.post(path, body, headers)
        except BaseException as exc:
            err = _infer_error(exc, f"infer timed out after {timeout_s:.0f}s")
            if err is None:
                raise
            raise err from exc
        if resp.status != 200:
            raise _binary_refusal(resp.status, resp.body)
        try:
            return _binary_outputs(resp.body, resp.header(HEADER_LENGTH))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise InferError(f"Triton's answer is not readable: {exc}") from exc

    async def _infer_structured(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> list[Tensor]:
        """Through tritonclient's InferInput / numpy / protobuf (or JSON over aiohttp)."""
        module = self._module()
        infer_inputs = []
        for tensor in inputs:
            arr = to_numpy(tensor)
            item = module.InferInput(tensor.name, list(arr.shape), tensor.datatype)
            item.set_data_from_numpy(arr)
            infer_inputs.append(item)
        requested = [module.InferRequestedOutput(o.name) for o in outputs] if outputs else None
        result = await self._call(
            timeout_s,
            "infer",
            model,
            infer_inputs,
            model_version=version,
            outputs=requested,
            parameters=parameters or None,
        )
        return _outputs(result)

    # ------------------------------------------------------------------ passthrough
    raw_protocols = frozenset({"http", "grpc"})

    async def infer_raw(
        self,
        protocol: str,
        model: str,
        version: str,
        body: bytes,
        meta: dict[str, Any],
        timeout_s: float,
    ) -> tuple[bytes, dict[str, Any]]:
        """A KServe request passed to Triton as it is (see ``RawInferenceEngine``): one
        pool of keep-alive HTTP connections (``runner/triton_http.py``) or one HTTP/2
        connection (``runner/triton_grpc.py``), no tensor decoded. Triton's refusals raise
        InferError: its 400 / INVALID_ARGUMENT with ``code="invalid_input"``, an unknown
        model / unreachable server as transient."""
        try:
            if protocol == "http":
                session = self._raw_session
                if session is None:
                    session = self._raw_session = TritonHttp("127.0.0.1", self._http_port)
                # No Accept-Encoding: Triton would compress the answer for us to inflate.
                content_type = meta.get("content_type") or "application/json"
                lines = _CONTENT_TYPE_LINES.get(content_type)
                if lines is None:
                    lines = f"Content-Type: {content_type}\r\n".encode("latin-1")
                    if len(_CONTENT_TYPE_LINES) < 64:
                        _CONTENT_TYPE_LINES[content_type] = lines
                if meta.get("header_length") is not None:
                    lines += b"%s: %d\r\n" % (_HEADER_LENGTH_B, int(meta["header_length"]))
                resp = await session.post(
                    f"/v2/models/{model}/versions/{version}/infer", body, lines, timeout_s
                )
                if resp.status != 200:
                    raise _http_refusal(resp.status, resp.body)
                out: dict[str, Any] = {}
                headers = resp.headers
                length = headers.get(_HEADER_LENGTH_KEY)
                if length is not None:
                    out["header_length"] = int(length)
                answer_type = headers.get(b"content-type")
                if answer_type is not None:
                    answer_type = answer_type.partition(b";")[0].strip()
                    if answer_type and answer_type != b"application/json":
                        out["content_type"] = answer_type.decode("latin-1")
                return resp.body, out
            if protocol == "grpc":
                return await self._raw_grpc(body, timeout_s), {}
        except BaseException as exc:
            err = _infer_error(exc, f"infer timed out after {timeout_s:g}s")
            if err is None:
                raise
            raise err from exc
        raise InferError(f"unknown passthrough protocol {protocol!r}", code="invalid_input")

    async def _raw_grpc(self, body: bytes, timeout_s: float) -> bytes:
        if self._raw_grpc_client is None:
            # our own HTTP/2 client (runner/triton_grpc.py): a third of grpc.aio's CPU per call
            self._raw_grpc_client = TritonGrpc("127.0.0.1", self._grpc_port)
        answer = await self._raw_grpc_client.unary(GRPC_INFER_METHOD, body, timeout_s)
        if answer.status != GRPC_OK:
            raise _grpc_status_refusal(answer.status, answer.message)
        return answer.body

    # ------------------------------------------------------------------ streaming
    async def decoupled(self, model: str, version: str) -> bool:
        """Whether the version's config says ``model_transaction_policy { decoupled: true }``
        (read from Triton once per version; False when Triton cannot tell)."""
        key = (model, version)
        if key not in self._decoupled:
            try:
                resp = await self._http.get(
                    f"{self._http_base}/v2/models/{model}/versions/{version}/config"
                )
                policy = resp.json().get("model_transaction_policy") or {}
            except (httpx.HTTPError, ValueError, AttributeError):
                return False
            if resp.status_code != 200:
                return False
            self._decoupled[key] = bool(policy.get("decoupled"))
        return self._decoupled[key]

    def infer_stream(
        self,
        model: str,
        version: str,
        inputs: list[Tensor],
        outputs: list[OutputRequest] | None,
        parameters: dict[str, Any],
        timeout_s: float,
    ) -> AsyncGenerator[list[Tensor], None]:
        """The outputs of each response of one request over gRPC streaming (decoupled models
        answer many times); raises InferError. Cancelling the iteration cancels the request."""
        from tritonclient.grpc import InferResult

        if self._stream_call is None:
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            self._stream_channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{self._grpc_port}",
                options=[
                    ("grpc.max_send_message_length", 2**31 - 1),
                    ("grpc.max_receive_message_length", 2**31 - 1),
                ],
            )
            stub = service_pb2_grpc.GRPCInferenceServiceStub(self._stream_channel)
            self._stream_call = stub.ModelStreamInfer
        request = build_request(model, version, inputs, outputs, parameters)
        return stream_infer(
            self._stream_call, request, timeout_s, lambda r: _outputs(InferResult(r))
        )

    async def metrics(self) -> dict[str, Any]:
        return await scrape_triton_metrics(self._http, self._metrics_url)

    async def reset(self) -> None:
        """Drop the connection (after a restart the old channel may be stale)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:
                log.debug("closing tritonclient failed", exc_info=True)
        session, self._raw_session = self._raw_session, None
        raw_grpc, self._raw_grpc_client = self._raw_grpc_client, None
        stream_channel, self._stream_channel = self._stream_channel, None
        self._stream_call = None
        self._decoupled.clear()
        with contextlib.suppress(Exception):
            if stream_channel is not None:
                await stream_channel.close()
        if session is not None:
            session.close()
        if raw_grpc is not None:
            raw_grpc.close()

    async def aclose(self) -> None:
        await self.reset()
        await self._http.aclose()


def _refusal(message: str, *, invalid: bool, missing: bool) -> InferError:
    return InferError(
        message or "Triton refused the request",
        transient=missing,
        code="invalid_input" if invalid and not missing else None,
    )


def _http_refusal(status: int, body: bytes) -> InferError:
    """Triton's HTTP error answer (``{"error": "..."}``) as an InferError: 400 is the
    request's fault, 404 / 503 (model not loaded here any more, server busy) transient."""
    try:
        message = str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        message = body[:4000].decode("utf-8", "replace")
    missing = status in (404, 503) or "unknown model" in message
    return _refusal(message, invalid=status == 400, missing=missing)


def _grpc_status_refusal(code: int, details: str) -> InferError:
    """Triton's gRPC error status (its number and message) as an InferError (same split as
    ``_http_refusal``; the message is the status's name when Triton gave none, as grpc.aio's
    ``details()``)."""
    message = details or grpc_status_name(code)
    missing = code in (GRPC_NOT_FOUND, GRPC_UNAVAILABLE) or "unknown model" in message
    return _refusal(message, invalid=code == GRPC_INVALID_ARGUMENT, missing=missing)


def _outputs(result: Any) -> list[Tensor]:
    response = result.get_response()
    if isinstance(response, dict):  # HTTP
        specs = [(o["name"], o["datatype"]) for o in response.get("outputs", [])]
    else:  # gRPC protobuf
        specs = [(o.name, o.datatype) for o in response.outputs]
    out = []
    for name, datatype in specs:
        arr = result.as_numpy(name)
        if arr is None:
            continue
        out.append(from_numpy(name, datatype, arr))
    return out


# ---------------------------------------------------------------------- binary HTTP infer
# Datatypes the binary path carries as the gRPC client does: the same numpy conversion
# (runner/tensors.py), the same bytes (tobytes; BYTES length-prefixed). BF16 stays structured.
_BINARY_DATATYPES = frozenset(NP_DTYPES)
_EXPECTED_DTYPES = {name: np.dtype(t) for name, t in NP_DTYPES.items()}
_UTILS: list[Any] = []


def _tc_utils() -> Any:
    """``tritonclient.utils``, imported on first use (it loads ml_dtypes: ~150 ms)."""
    if not _UTILS:
        import tritonclient.utils

        _UTILS.append(tritonclient.utils)
    return _UTILS[0]


# Request parameters tritonclient refuses (it sets them itself) and their prefix.
_RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers"}
    | {"binary_data_output"}
)
_INT64 = (-(2**63), 2**63 - 1)
# Inputs above this many bytes keep the structured path: newer Triton releases cap an HTTP
# request's size (--http-max-input-size, 64 MiB by default), gRPC's limit is the client's.
MAX_BINARY_BODY = 32 * 1024 * 1024


def _plain_parameter(key: str, value: Any) -> bool:
    """A request parameter the gRPC client sends as such (others make it refuse the call)."""
    if key in _RESERVED_PARAMETERS or key.startswith("triton_"):
        return False
    if isinstance(value, float):
        return math.isfinite(value)  # JSON has no NaN / Infinity
    if isinstance(value, bool | str):
        return True
    return isinstance(value, int) and _INT64[0] <= value <= _INT64[1]


def _binary_request(
    inputs: list[Tensor], outputs: list[OutputRequest] | None, parameters: dict[str, Any]
) -> tuple[bytes, int] | None:
    """The KServe binary-extension body (JSON header, then each input's raw bytes) and the
    header's length; None when the structured path must take the call: BF16 or unknown
    datatypes, tensor or output parameters, parameters the client library refuses or
    converts, an array whose dtype does not match its datatype, inputs over
    ``MAX_BINARY_BODY`` bytes. Raises TensorError for data
    that does not fit its shape or datatype, exactly as the structured path does."""
    if outputs and any(o.parameters for o in outputs):
        return None
    if parameters and not all(_plain_parameter(k, v) for k, v in parameters.items()):
        return None
    heads: list[dict[str, Any]] = []
    raws: list[bytes] = []
    size = 0
    for tensor in inputs:
        if tensor.parameters or tensor.datatype not in _BINARY_DATATYPES:
            return None
        arr = to_numpy(tensor)
        if arr.dtype != _EXPECTED_DTYPES[tensor.datatype]:  # tritonclient would refuse it
            return None
        if tensor.datatype == "BYTES":
            serialized = _tc_utils().serialize_byte_tensor(arr)
            raw = serialized.item() if serialized.size > 0 else b""
        else:
            raw = arr.tobytes()
        size += len(raw)
        if size > MAX_BINARY_BODY:
            return None
        heads.append(
            {
                "name": tensor.name,
                "shape": list(arr.shape),
                "datatype": tensor.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    doc: dict[str, Any] = {"inputs": heads}
    if outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in outputs]
    doc["parameters"] = {**parameters, "binary_data_output": True}
    header = json.dumps(doc, separators=(",", ":")).encode()
    return b"".join([header, *raws]), len(header)


def _binary_refusal(status: int, body: bytes) -> InferError:
    """Triton's HTTP error answer as the structured path reports the gRPC one: its message
    as it is, transient on the same markers (503 is gRPC's UNAVAILABLE)."""
    try:
        message = str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        message = body[:4000].decode("utf-8", "replace")
    message = message or f"Triton answered HTTP {status}"
    transient = status == 503 or any(marker in message for marker in _TRANSIENT_MARKERS)
    return InferError(message, transient=transient)


def _binary_outputs(body: bytes, header_length: str | None) -> list[Tensor]:
    """Outputs of a binary-extension answer, decoded like tritonclient's ``as_numpy``."""
    utils = _tc_utils()
    deserialize_bytes_tensor, triton_to_np_dtype = (
        utils.deserialize_bytes_tensor,
        utils.triton_to_np_dtype,
    )
    size = len(body) if header_length is None else int(header_length)
    answer = json.loads(body[:size])
    offset = size
    out = []
    for o in answer.get("outputs") or []:
        name, datatype, shape = o["name"], o["datatype"], o["shape"]
        length = (o.get("parameters") or {}).get("binary_data_size")
        if length is not None:
            raw = body[offset : offset + int(length)]
            offset += int(length)
            if datatype == "BYTES":
                arr = deserialize_bytes_tensor(raw)
            else:
                arr = np.frombuffer(raw, dtype=triton_to_np_dtype(datatype))
        elif o.get("data") is not None:  # Triton answered this one as JSON after all
            arr = np.array(o["data"], dtype=triton_to_np_dtype(datatype))
        else:
            arr = np.empty(0, dtype=triton_to_np_dtype(datatype))
        out.append(from_numpy(name, datatype, arr.reshape(shape)))
    return out
