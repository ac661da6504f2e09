"""Triton's binary tensor data extension (KServe v2 over HTTP), both directions.

A binary request body is a JSON inference header followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header says how long the JSON part is. Each input
sent in binary carries ``parameters.binary_data_size`` and its bytes follow the header in
the order the inputs are listed. Raw bytes are the little-endian values in row-major
order; BYTES elements are each a 4-byte little-endian length followed by the bytes.

A response carries an output in binary when the request asks for it (the output's
``parameters.binary_data``, else the request's ``parameters.binary_data_output``): the
output's ``data`` is dropped, ``parameters.binary_data_size`` set, its bytes appended after
the JSON header, and the response carries ``Inference-Header-Content-Length``.

gpufleet jobs hold tensors as JSON (``data`` lists), so decoded inputs become JSON values;
BYTES elements must therefore be UTF-8 text (others are refused with the tensor's name).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from gpufleet.tensors import dtype_of, from_raw_bytes, to_raw_bytes

from control_plane.api import jsonbody
from control_plane.errors import InvalidRequest

__all__ = [
    "BINARY_CONTENT_TYPE",
    "BINARY_PARAMETERS",
    "HEADER_LENGTH",
    "attach_binary_inputs",
    "decode_raw",
    "encode_raw",
    "encode_response",
    "header_size",
    "split_body",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
# Parameters of the extension itself: consumed here, never passed on to a job.
BINARY_PARAMETERS = frozenset({"binary_data", "binary_data_size", "binary_data_output"})


def header_size(body: bytes, header_length: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` value checked against ``body`` (None: the
    whole body is JSON)."""
    if header_length is None:
        return None
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 <= size <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} must be an integer between 0 and the body size ({len(body)})",
            field=HEADER_LENGTH,
        )
    return size


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON inference header (an object) and the binary bytes that follow it."""
    size = header_size(body, header_length)
    if size is None:
        head, rest = body, b""
    else:
        head, rest = body[:size], body[size:]
    doc = jsonbody.loads(head, what="JSON inference header") if head.strip() else None
    if not isinstance(doc, dict):
        raise InvalidRequest("the inference header must be a JSON object", field="body")
    return doc, rest


def decode_raw(raw: bytes, datatype: str, shape: list[int], name: str) -> list[Any]:
    """The flat JSON values of one tensor's raw bytes (BYTES elements as UTF-8 text)."""
    try:
        array = from_raw_bytes(raw, datatype, shape)
    except ValueError as exc:
        raise InvalidRequest(f"input {name!r}: {exc}", field=f"inputs.{name}") from exc
    flat = array.reshape(-1).tolist()
    if datatype != "BYTES":
        return list(flat)
    try:
        return [item.decode("utf-8") for item in flat]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"input {name!r}: BYTES elements must be UTF-8 text (jobs carry tensors as JSON)",
            field=f"inputs.{name}",
        ) from exc


def encode_raw(data: list[Any], datatype: str) -> bytes:
    """Raw little-endian bytes of flat JSON values (BYTES: length-prefixed UTF-8)."""
    if datatype == "BYTES":
        array = np.empty(len(data), dtype=object)
        array[:] = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in data]
        return to_raw_bytes(array, "BYTES")
    return to_raw_bytes(np.asarray(data, dtype=dtype_of(datatype)), datatype)


def attach_binary_inputs(doc: dict[str, Any], blob: bytes) -> None:
    """Move the binary bytes into the inputs of ``doc`` as ``data`` (in place).

    Inputs with ``parameters.binary_data_size`` take their bytes from ``blob`` in order;
    the sizes must add up to ``len(blob)`` exactly.
    """
    inputs = doc.get("inputs")
    offset = 0
    for i, item in enumerate(inputs if isinstance(inputs, list) else []):
        params = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        name = str(item.get("name", f"#{i}"))
        size = params.pop("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(
                f"input {name!r}: binary_data_size must be a non-negative integer",
                field=f"inputs[{i}].parameters.binary_data_size",
            )
        if "data" in item:
            raise InvalidRequest(
                f"input {name!r} has both data and binary_data_size", field=f"inputs[{i}].data"
            )
        if offset + size > len(blob):
            raise InvalidRequest(
                f"input {name!r}: binary_data_size {size} runs past the end of the body "
                f"({len(blob) - offset} bytes left)",
                field=f"inputs[{i}].parameters.binary_data_size",
            )
        shape, datatype = item.get("shape"), item.get("datatype")
        if not (
            isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        ) or not isinstance(datatype, str):
            raise InvalidRequest(
                f"input {name!r}: a binary input needs a datatype and a shape of integers >= 0",
                field=f"inputs[{i}]",
            )
        _check_datatype(datatype, name, i)
        if datatype != "BYTES" and size != math.prod(shape) * dtype_of(datatype).itemsize:
            raise InvalidRequest(
                f"input {name!r}: {size} bytes do not hold shape {shape} of {datatype}",
                field=f"inputs[{i}].parameters.binary_data_size",
            )
        item["data"] = decode_raw(blob[offset : offset + size], datatype, shape, name)
        offset += size
        if not params:
            del item["parameters"]
    if offset != len(blob):
        raise InvalidRequest(
            f"{len(blob) - offset} bytes after the inference header are not claimed by any "
            "input's binary_data_size",
            field=HEADER_LENGTH,
        )


def _check_datatype(datatype: str, name: str, index: int) -> None:
    try:
        dtype_of(datatype)
    except ValueError as exc:
        raise InvalidRequest(
            f"input {name!r}: unsupported datatype {datatype!r}", field=f"inputs[{index}].datatype"
        ) from exc


def encode_response(doc: dict[str, Any], binary: Callable[[str], bool]) -> tuple[bytes, int | None]:
    """Serialise a response; outputs for which ``binary(name)`` is true go as raw bytes.

    Returns the body and the JSON header's length (None when nothing went binary: the body
    is then plain JSON).
    """
    chunks: list[bytes] = []
    for out in doc.get("outputs", []):
        if not binary(out["name"]):
            continue
        raw = encode_raw(out.pop("data", None) or [], out["datatype"])
        params = dict(out.get("parameters") or {})
        params["binary_data_size"] = len(raw)
        out["parameters"] = params
        chunks.append(raw)
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
