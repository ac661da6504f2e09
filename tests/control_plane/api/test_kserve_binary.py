"""Triton's binary tensor extension codec (control_plane.api.kserve_binary), checked against
tritonclient's own encoders and decoders where it has them."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from control_plane.api.kserve_binary import (
    attach_binary_inputs,
    decode_raw,
    encode_raw,
    encode_response,
    split_body,
)
from control_plane.errors import InvalidRequest

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[1, 2, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[1, 2, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-3, 0, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 5]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -2.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3e38]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300]], dtype=np.float64),
}


@pytest.mark.parametrize("datatype", sorted(NUMERIC))
def test_numeric_round_trip(datatype: str) -> None:
    array = NUMERIC[datatype]
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    data = decode_raw(raw, datatype, list(array.shape), "T")
    assert data == array.reshape(-1).tolist()
    assert encode_raw(data, datatype) == raw


def test_bytes_match_tritonclient() -> None:
    array = np.array([b"ab", b"", "żółw".encode()], dtype=object)
    raw = serialize_byte_tensor(array).item()
    assert raw[:6] == struct.pack("<I", 2) + b"ab"
    assert decode_raw(raw, "BYTES", [3], "T") == ["ab", "", "żółw"]
    assert encode_raw(["ab", "", "żółw"], "BYTES") == raw
    assert deserialize_bytes_tensor(encode_raw(["x", "yz"], "BYTES")).tolist() == [b"x", b"yz"]


def test_non_utf8_bytes_are_refused_with_the_tensor_name() -> None:
    raw = struct.pack("<I", 1) + b"\xff"
    with pytest.raises(InvalidRequest, match=r"'TEXT'.*UTF-8"):
        decode_raw(raw, "BYTES", [1], "TEXT")


def body(inputs: list[dict[str, Any]], *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), str(len(head))


def test_attach_in_order_and_mixed_with_json() -> None:
    a = np.arange(4, dtype=np.int32)
    s = serialize_byte_tensor(np.array([b"hi", b"there"], dtype=object)).item()
    raw, n = body(
        [
            {
                "name": "A",
                "datatype": "INT32",
                "shape": [4],
                "parameters": {"binary_data_size": 16},
            },
            {"name": "J", "datatype": "FP32", "shape": [1], "data": [1.5]},
            {
                "name": "S",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(s), "keep": 1},
            },
        ],
        a.tobytes(),
        s,
    )
    doc, blob = split_body(raw, n)
    attach_binary_inputs(doc, blob)
    a_in, j_in, s_in = doc["inputs"]
    assert a_in == {"name": "A", "datatype": "INT32", "shape": [4], "data": [0, 1, 2, 3]}
    assert j_in["data"] == [1.5]
    assert s_in["data"] == ["hi", "there"] and s_in["parameters"] == {"keep": 1}


@pytest.mark.parametrize(
    ("size", "extra", "match"),
    [
        (8, b"", "do not hold"),
        (16, b"", "past the end"),
        (12, b"\0" * 4, "not claimed"),
        (-1, b"", "non-negative"),
    ],
)
def test_sizes_must_add_up(size: int, extra: bytes, match: str) -> None:
    inputs = [
        {"name": "A", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": size}}
    ]
    raw, n = body(inputs, b"\0" * 12, extra)
    doc, blob = split_body(raw, n)
    with pytest.raises(InvalidRequest, match=match):
        attach_binary_inputs(doc, blob)


def test_header_length_checked() -> None:
    for bad in ("x", "-1", "999"):
        with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
            split_body(b"{}", bad)
    with pytest.raises(InvalidRequest, match="JSON object"):
        split_body(b"[1]", None)
    with pytest.raises(InvalidRequest, match="malformed"):
        split_body(b'{"a"', None)
    assert split_body(b'{"a":1}xyz', "7") == ({"a": 1}, b"xyz")


def test_encode_response_only_what_is_asked() -> None:
    doc = {
        "model_name": "m",
        "outputs": [
            {"name": "X", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]},
            {"name": "Y", "datatype": "BYTES", "shape": [1], "data": ["ok"]},
            {"name": "Z", "datatype": "INT8", "shape": [1], "data": [3]},
        ],
    }
    plain, n = encode_response(json.loads(json.dumps(doc)), lambda name: False)
    assert n is None and json.loads(plain) == doc
    raw, n = encode_response(doc, lambda name: name in {"X", "Y"})
    assert n is not None
    head = json.loads(raw[:n])
    x, y, z = head["outputs"]
    assert x["parameters"] == {"binary_data_size": 8} and "data" not in x
    assert y["parameters"] == {"binary_data_size": 6}
    assert z["data"] == [3] and "parameters" not in z
    tail = raw[n:]
    assert np.frombuffer(tail[:8], dtype="<f4").tolist() == [1.0, 2.0]
    assert deserialize_bytes_tensor(tail[8:]).tolist() == [b"ok"]
