"""Tensor conversion: wire ``Tensor`` (KServe v2 JSON form) <-> numpy arrays.

BYTES elements travel as strings on the wire (UTF-8; undecodable bytes are replaced).
A ``data_ref`` input is converted once its bytes were fetched (:mod:`runner.payloads`): the
array rides along on an :class:`ArrayTensor`; outputs carry theirs too, so a large result is
stored as raw bytes without a round trip through Python lists.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from gpufleet.wire import Tensor
from pydantic import PrivateAttr

NP_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

# Triton model-config data types (config.pbtxt TYPE_*) -> wire datatypes.
CONFIG_DATATYPES: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}


class TensorError(ValueError):
    """A tensor that cannot be converted (bad data for its shape/datatype, or data_ref)."""


class ArrayTensor(Tensor):
    """A wire tensor whose values are also held as an array (``array``)."""

    _array: Any = PrivateAttr(default=None)

    @property
    def array(self) -> np.ndarray | None:
        return cast("np.ndarray | None", self._array)

    @classmethod
    def of(cls, tensor: Tensor, array: np.ndarray, **fields: Any) -> ArrayTensor:
        out = cls.model_validate({**tensor.model_dump(exclude_none=True), **fields})
        out._array = array
        return out


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def to_numpy(tensor: Tensor) -> np.ndarray:
    """The tensor's values as an array of its shape and datatype."""
    if isinstance(tensor, ArrayTensor) and tensor.array is not None:
        return tensor.array
    if tensor.data is None:
        raise TensorError(f"input {tensor.name!r}: its data_ref payload was not fetched")
    flat = _flatten(tensor.data)
    try:
        if tensor.datatype == "BYTES":
            arr = np.array(
                [v.encode() if isinstance(v, str) else bytes(v) for v in flat], dtype=np.object_
            )
        else:
            arr = np.array(flat, dtype=NP_DTYPES[tensor.datatype])
        return arr.reshape(tensor.shape)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TensorError(f"input {tensor.name!r}: {exc}") from exc


def from_numpy(name: str, datatype: str, arr: np.ndarray) -> Tensor:
    """A wire tensor with flat row-major data."""
    if datatype == "BYTES":
        data: list[Any] = [
            v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.flatten()
        ]
    else:
        data = arr.flatten().tolist()
    # Built without validation: the name and datatype are Triton's own (from the model's
    # config), the shape numpy's, the data a flat list of that dtype's Python values (the
    # control plane validates the result the runner sends, as any request).
    out = ArrayTensor.model_construct(
        name=name, datatype=datatype, shape=list(arr.shape), data=data
    )
    out._array = arr
    return out
