"""numpy arrays <-> wire tensors (KServe v2 / Triton JSON form) and raw tensor bytes.

Datatypes map both ways::

    BOOL  <-> bool        UINT8..UINT64 <-> uint8..uint64    INT8..INT64 <-> int8..int64
    FP16  <-> float16     FP32 <-> float32                    FP64 <-> float64
    BYTES <-> object arrays of bytes (str and ``np.bytes_``/``np.str_`` arrays accepted)

In JSON, BYTES elements travel as UTF-8 strings; decoded BYTES tensors are object arrays of
``bytes`` (what ``tritonclient`` returns). Raw bytes (for ``data_ref`` payloads) are the
little-endian values, BYTES as 4-byte little-endian length-prefixed elements, as in Triton's
binary tensor extension.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gpufleet.wire import Tensor

__all__ = [
    "datatype_of",
    "decode_outputs",
    "dtype_of",
    "encode_outputs",
    "from_raw_bytes",
    "to_arrays",
    "to_ndarray",
    "to_raw_bytes",
    "to_tensor",
    "to_tensors",
]

_NUMERIC: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE: dict[np.dtype[Any], str] = {dt: name for name, dt in _NUMERIC.items()}


def datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The wire datatype of a numpy array (``BYTES`` for object, bytes and str arrays)."""
    dtype = array.dtype
    known = _BY_DTYPE.get(dtype)  # native byte order: no new dtype object per call
    if known is not None:
        return known
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _BY_DTYPE[dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"unsupported dtype {array.dtype} (no wire datatype)") from None


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a wire datatype (``object`` for BYTES)."""
    if datatype == "BYTES":
        return np.dtype(object)
    try:
        return _NUMERIC[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype {datatype!r}") from None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"BYTES elements must be bytes or str, not {type(value).__name__}")


def _json_bytes(value: Any) -> str:
    raw = _as_bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            "BYTES element is not valid UTF-8 and cannot travel as JSON; "
            "send it as a raw payload (data_ref)"
        ) from None


def to_tensor(name: str, value: Any, datatype: str | None = None) -> Tensor:
    """A wire tensor from a numpy array (or anything ``np.asarray`` accepts).

    ``datatype`` forces the wire type (the array is cast); by default it follows the dtype.
    """
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    dt = datatype or datatype_of(array)
    shape = [int(d) for d in array.shape]
    flat = array.reshape(-1)
    data: list[Any]
    if dt == "BYTES":
        data = [_json_bytes(v) for v in flat.tolist()]
    else:
        data = flat.astype(dtype_of(dt), copy=False).tolist()
    return Tensor(name=name, datatype=dt, shape=shape, data=data)  # type: ignore[arg-type]


def _flatten(data: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list | tuple):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def to_ndarray(tensor: Tensor) -> np.ndarray[Any, Any]:
    """A numpy array from an inline wire tensor (``data`` flat or nested, row-major)."""
    if tensor.data is None:
        raise ValueError(f"tensor {tensor.name!r} has no inline data (data_ref)")
    flat = _flatten(tensor.data)
    dtype = dtype_of(tensor.datatype)
    if tensor.datatype == "BYTES":
        array = np.empty(len(flat), dtype=object)
        array[:] = [_as_bytes(v) for v in flat]
    else:
        array = np.asarray(flat, dtype=dtype)
    return array.reshape(tensor.shape)


def to_raw_bytes(value: Any, datatype: str | None = None) -> bytes:
    """The raw little-endian bytes of an array (BYTES: 4-byte length-prefixed elements)."""
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    dt = datatype or datatype_of(array)
    if dt == "BYTES":
        parts = []
        for v in array.reshape(-1).tolist():
            raw = _as_bytes(v)
            parts.append(struct.pack("<I", len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return array.astype(dtype_of(dt).newbyteorder("<"), copy=False).tobytes(order="C")


def from_raw_bytes(data: bytes, datatype: str, shape: list[int]) -> np.ndarray[Any, Any]:
    """An array from raw tensor bytes (the inverse of :func:`to_raw_bytes`)."""
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        items: list[bytes] = []
        offset = 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise ValueError("truncated BYTES tensor")
            (n,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if offset + n > len(data):
                raise ValueError("truncated BYTES tensor")
            items.append(bytes(data[offset : offset + n]))
            offset += n
        if len(items) != count:
            raise ValueError(f"BYTES tensor has {len(items)} elements, shape needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = dtype_of(datatype).newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{len(data)} bytes do not hold {count} {datatype} elements")
    return np.frombuffer(data, dtype=dtype).astype(dtype_of(datatype)).reshape(shape)


def to_tensors(inputs: Mapping[str, Any] | Iterable[Tensor]) -> list[Tensor]:
    """Wire tensors from ``{"NAME": array_or_list}`` or an iterable of :class:`Tensor`."""
    if isinstance(inputs, Mapping):
        return [v if isinstance(v, Tensor) else to_tensor(k, v) for k, v in inputs.items()]
    tensors = list(inputs)
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError("inputs must be a mapping of name -> array or a list of Tensor")
    return tensors


def to_arrays(tensors: Iterable[Tensor]) -> dict[str, np.ndarray[Any, Any]]:
    """``{"NAME": array}`` from inline wire tensors."""
    return {t.name: to_ndarray(t) for t in tensors}


def encode_outputs(arrays: Iterable[tuple[str, str, Any]]) -> bytes:
    """The stored form of large outputs (``outputs_url``) from ``(name, datatype, array)``.

    Triton's binary tensor extension with a newline marking the header's end: one line of JSON
    ``{"outputs":[{"name","datatype","shape","parameters":{"binary_data_size":N}}, ...]}``,
    ``\\n``, then each tensor's raw bytes (:func:`to_raw_bytes`) in that order.
    """
    header: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, datatype, value in arrays:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        raw = to_raw_bytes(array, datatype)
        header.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": [int(d) for d in array.shape],
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    head = json.dumps({"outputs": header}, separators=(",", ":")).encode()
    return b"".join([head, b"\n", *blobs])


def decode_outputs(body: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """``{"NAME": array}`` from what ``outputs_url`` serves: the binary form written by
    :func:`encode_outputs`, or plain JSON (a list of tensors or ``{"outputs": [...]}``)."""
    end = body.find(b"\n")
    head, tail = (body, b"") if end < 0 else (body[:end], memoryview(body)[end + 1 :])
    doc = json.loads(head)
    items = doc.get("outputs", []) if isinstance(doc, dict) else doc
    out: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for item in items:
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[item["name"]] = to_ndarray(Tensor.model_validate(item))
            continue
        if offset + int(size) > len(tail):
            raise ValueError(f"stored outputs are truncated at tensor {item['name']!r}")
        raw = bytes(tail[offset : offset + int(size)])
        offset += int(size)
        out[item["name"]] = from_raw_bytes(raw, item["datatype"], list(item["shape"]))
    return out
