"""Streaming inference on Triton: the ``ModelStreamInfer`` gRPC RPC (bidirectional).

Used for decoupled models (``model_transaction_policy { decoupled: true }``), whose one
request yields any number of responses; it works for any model (one response). The request
asks for an empty final response (``triton_enable_empty_final_response``), so the end of a
request's responses is Triton's ``triton_final_response`` flag, not a guess.

Cancelling the consumer (the task iterating :func:`stream_infer`) cancels the RPC; Triton then
cancels the request, which a decoupled Python-backend model sees through
``response_sender.is_cancelled()`` and stops generating.

The request is built from tritonclient's public protobuf modules (``service_pb2``) and
``tritonclient.utils`` (tritonclient's ``stream_infer`` helper refuses the ``triton_``
parameter this needs).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.tensors import to_numpy

_request_ids = itertools.count(1)


def build_request(
    model: str,
    version: str,
    inputs: list[Tensor],
    outputs: list[OutputRequest] | None,
    parameters: dict[str, Any],
) -> Any:
    """A ``ModelInferRequest`` with raw input contents and the empty-final-response flag."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    req = service_pb2.ModelInferRequest(
        model_name=model, model_version=version, id=f"gf-stream-{next(_request_ids)}"
    )
    for tensor in inputs:
        arr = to_numpy(tensor)
        item = req.inputs.add()
        item.name, item.datatype = tensor.name, tensor.datatype
        item.shape.extend(int(d) for d in arr.shape)
        if tensor.datatype == "BYTES":
            raw = serialize_byte_tensor(arr)
            req.raw_input_contents.append(raw.item() if raw.size else b"")
        else:
            req.raw_input_contents.append(arr.tobytes())
    for out in outputs or []:
        req.outputs.add().name = out.name
    for key, value in (parameters or {}).items():
        param = req.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        elif isinstance(value, str):
            param.string_param = value
        else:
            raise InferError(f"parameter {key!r}: unsupported type", code="invalid_input")
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


async def stream_infer(
    stub_call: Any,
    request: Any,
    timeout_s: float,
    decode: Any,
) -> AsyncGenerator[list[Tensor], None]:
    """Send ``request`` on one ``ModelStreamInfer`` call and yield the outputs of each response
    (``decode(infer_response)``), until Triton flags the final one. ``stub_call``: the
    ``ModelStreamInfer`` stream-stream callable of a grpc.aio channel. Raises InferError with
    Triton's message; leaving the iteration early (or being cancelled) cancels the RPC."""
    import grpc

    finished = asyncio.Event()

    async def requests() -> AsyncIterator[Any]:
        yield request
        await finished.wait()  # keep the stream open until the last response came back

    call = stub_call(requests(), timeout=timeout_s)
    try:
        async for response in call:
            if response.error_message:
                raise InferError(response.error_message, code=_code(response.error_message))
            infer = response.infer_response
            outputs = decode(infer)
            if outputs:
                yield outputs
            final = infer.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return
        raise InferError("Triton closed the stream before the final response", transient=True)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise InferError(f"stream timed out after {timeout_s:g}s", transient=True) from exc
        transient = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
        raise InferError(str(exc.details() or exc.code().name), transient=transient) from exc
    finally:
        finished.set()
        call.cancel()  # a no-op once the RPC is over; else Triton cancels the request


def _code(message: str) -> str | None:
    lowered = message.lower()
    if "unexpected" in lowered or "expected" in lowered or "invalid" in lowered:
        return "invalid_input"
    return None
