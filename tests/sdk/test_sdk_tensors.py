"""numpy <-> wire tensors for every datatype, inline JSON and raw bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gpufleet.tensors import (
    datatype_of,
    from_raw_bytes,
    to_arrays,
    to_ndarray,
    to_raw_bytes,
    to_tensor,
    to_tensors,
)
from gpufleet.wire import DATATYPES, Tensor

NUMERIC = {
    "BOOL": np.array([[True, False, True]], dtype=np.bool_),
    "UINT8": np.array([0, 7, 255], dtype=np.uint8),
    "UINT16": np.array([0, 65535], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-32768, 32767], dtype=np.int16),
    "INT32": np.array([-(2**31), 2**31 - 1], dtype=np.int32),
    "INT64": np.array([[-(2**63)], [2**63 - 1]], dtype=np.int64),
    "FP16": np.array([0.5, -1.25, 65504.0], dtype=np.float16),
    "FP32": np.arange(12, dtype=np.float32).reshape(2, 3, 2) / 3,
    "FP64": np.array([1e-300, -2.5, np.pi], dtype=np.float64),
}


def _bytes_array() -> np.ndarray:
    a = np.empty((2, 2), dtype=object)
    a[:] = [[b"ab", b""], ["h\u00e9llo".encode(), b"\xff\xfe"]]
    return a


def test_every_wire_datatype_is_covered() -> None:
    assert set(NUMERIC) | {"BYTES"} == set(DATATYPES)


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_numeric_json_round_trip(datatype: str) -> None:
    array = NUMERIC[datatype]
    tensor = to_tensor("X", array)
    assert tensor.datatype == datatype
    assert tensor.shape == list(array.shape)
    # through real JSON, as on the wire
    back = to_ndarray(Tensor.model_validate(json.loads(tensor.model_dump_json())))
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_numeric_raw_round_trip(datatype: str) -> None:
    array = NUMERIC[datatype]
    raw = to_raw_bytes(array)
    assert len(raw) == array.nbytes
    back = from_raw_bytes(raw, datatype, list(array.shape))
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_raw_bytes_are_little_endian_even_from_big_endian_arrays() -> None:
    big = np.array([1, 256], dtype=">i4")
    assert datatype_of(big) == "INT32"
    assert to_raw_bytes(big) == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_bytes_json_round_trip_gives_object_array_of_bytes() -> None:
    array = _bytes_array()
    array[1, 1] = b"plain"  # JSON carries UTF-8 only
    tensor = to_tensor("S", array)
    assert tensor.datatype == "BYTES"
    assert tensor.data == ["ab", "", "h\u00e9llo", "plain"]
    back = to_ndarray(Tensor.model_validate_json(tensor.model_dump_json()))
    assert back.dtype == object and back.shape == (2, 2)
    assert back.tolist() == [[b"ab", b""], ["h\u00e9llo".encode(), b"plain"]]


def test_str_and_fixed_width_arrays_are_bytes() -> None:
    assert to_tensor("S", np.array(["a", "bc"])).data == ["a", "bc"]
    assert to_tensor("S", np.array([b"a", b"bc"])).datatype == "BYTES"
    assert to_ndarray(to_tensor("S", np.array(["x"]))).tolist() == [b"x"]


def test_non_utf8_bytes_cannot_be_inlined_but_travel_raw() -> None:
    array = _bytes_array()
    with pytest.raises(ValueError, match="UTF-8"):
        to_tensor("S", array)
    raw = to_raw_bytes(array)
    assert raw[:4] == b"\x02\x00\x00\x00" and raw[4:6] == b"ab"
    back = from_raw_bytes(raw, "BYTES", [2, 2])
    assert back.tolist() == array.tolist()


def test_raw_bytes_size_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        from_raw_bytes(b"\x00" * 7, "FP32", [2])
    with pytest.raises(ValueError, match="truncated"):
        from_raw_bytes(b"\x05\x00\x00\x00ab", "BYTES", [1])
    with pytest.raises(ValueError, match="elements"):
        from_raw_bytes(b"\x01\x00\x00\x00a", "BYTES", [2])


def test_nested_data_and_lists_and_forced_datatype() -> None:
    t = Tensor(name="X", datatype="FP32", shape=[2, 2], data=[[1, 2], [3, 4]])
    np.testing.assert_array_equal(to_ndarray(t), np.array([[1, 2], [3, 4]], np.float32))
    forced = to_tensor("X", [1, 2, 3], datatype="FP16")
    assert forced.datatype == "FP16"
    assert to_ndarray(forced).dtype == np.float16


def test_scalar_and_empty_shapes() -> None:
    scalar = to_tensor("X", np.float32(2.5))
    assert scalar.shape == [] and to_ndarray(scalar).shape == ()
    empty = to_tensor("X", np.zeros((0, 3), np.int32))
    assert empty.shape == [0, 3] and to_ndarray(empty).shape == (0, 3)


def test_unsupported_dtype_and_unknown_datatype() -> None:
    with pytest.raises(ValueError, match="unsupported dtype"):
        to_tensor("X", np.array([1 + 2j]))
    with pytest.raises(ValueError, match="no inline data"):
        to_ndarray(Tensor(name="X", datatype="FP32", shape=[1], data_ref="pay_1"))


def test_mappings_and_lists() -> None:
    tensors = to_tensors({"A": np.ones(2, np.int8), "B": [1.5]})
    assert [t.name for t in tensors] == ["A", "B"]
    assert to_tensors(tensors) == tensors
    assert set(to_arrays(tensors)) == {"A", "B"}
    with pytest.raises(TypeError):
        to_tensors([np.ones(2)])  # type: ignore[list-item]


def test_stored_outputs_binary_round_trip_every_datatype() -> None:
    from gpufleet.tensors import decode_outputs, encode_outputs

    items = [(f"O_{dt}", dt, a) for dt, a in sorted(NUMERIC.items())]
    items.append(("O_BYTES", "BYTES", _bytes_array()))
    body = encode_outputs(items)
    header = json.loads(body[: body.index(b"\n")])
    assert [o["name"] for o in header["outputs"]] == [n for n, _, _ in items]
    assert all("binary_data_size" in o["parameters"] for o in header["outputs"])
    got = decode_outputs(body)
    for name, _, array in items:
        assert got[name].shape == array.shape
        np.testing.assert_array_equal(got[name], array)
        if array.dtype != object:
            assert got[name].dtype == array.dtype


def test_stored_outputs_plain_json_and_truncation() -> None:
    from gpufleet.tensors import decode_outputs, encode_outputs

    t = to_tensor("OUT", np.array([[1.5, 2.5]], dtype=np.float32)).model_dump(mode="json")
    for doc in ([t], {"outputs": [t]}):
        out = decode_outputs(json.dumps(doc).encode())
        np.testing.assert_array_equal(out["OUT"], np.array([[1.5, 2.5]], dtype=np.float32))
    body = encode_outputs([("OUT", "FP32", np.arange(4, dtype=np.float32))])
    with pytest.raises(ValueError, match="truncated"):
        decode_outputs(body[:-1])
