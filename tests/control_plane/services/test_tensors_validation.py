"""Tensor checks against a stored config: each error names the tensor and its field."""

from __future__ import annotations

from typing import Any

import pytest
from gpufleet.wire import OutputRequest, Tensor

from control_plane.errors import InvalidRequest, PayloadTooLarge
from control_plane.services.tensors import element_count, validate_tensors

INPUTS = [
    {"name": "INPUT0", "datatype": "FP32", "dims": [4]},
    {"name": "INPUT1", "datatype": "FP32", "dims": [-1]},
    {"name": "MASK", "datatype": "BYTES", "dims": [1], "optional": True},
]
OUTPUTS = [{"name": "OUTPUT0", "datatype": "FP32", "dims": [4]}]


def t(name: str = "INPUT0", dtype: str = "FP32", shape: Any = (1, 4), data: Any = None) -> Tensor:
    shape = list(shape)
    if data is None:
        n = 1
        for d in shape:
            n *= d
        data = [1.0] * n
    return Tensor(name=name, datatype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


def check(inputs: list[Tensor], outputs: Any = None, mbs: int = 8, **kw: Any) -> None:
    validate_tensors(
        inputs,
        outputs,
        INPUTS,
        OUTPUTS,
        mbs,
        max_inline_bytes=kw.get("limit", 10_000),
        check_payload=_check_payload,
    )


def _check_payload(index: int, tensor: Tensor) -> None:
    if tensor.data_ref != "ok":
        raise InvalidRequest("no such payload", field=f"inputs[{index}].data_ref")


def err(inputs: list[Tensor], **kw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        check(inputs, **kw)
    return exc.value


def test_valid_request_passes() -> None:
    check([t(), t("INPUT1", shape=(2, 7))], [OutputRequest(name="OUTPUT0")])
    check([t(shape=(4,)), t("INPUT1", shape=(3,))], mbs=0)
    check([t(), t("INPUT1", shape=(1, 2)), t("MASK", "BYTES", (1, 1), ["x"])])


@pytest.mark.parametrize(
    ("inputs", "field", "words"),
    [
        ([t("NOPE"), t("INPUT1")], "inputs[0].name", ["'NOPE'", "INPUT0"]),
        ([t(dtype="FP64"), t("INPUT1")], "inputs[0].datatype", ["'INPUT0'", "FP64", "FP32"]),
        ([t(shape=(1, 5)), t("INPUT1")], "inputs[0].shape", ["'INPUT0'", "[4]"]),
        ([t(shape=(4,)), t("INPUT1")], "inputs[0].shape", ["'INPUT0'", "rank"]),
        ([t(shape=(9, 4)), t("INPUT1")], "inputs[0].shape", ["'INPUT0'", "batch size 9"]),
        ([t(), t("INPUT1", data=[1, 2])], "inputs[1].data", ["'INPUT1'", "2 data elements"]),
        ([t(), t("INPUT0")], "inputs[1].name", ["'INPUT0'", "twice"]),
        ([t()], "inputs", ["'INPUT1'", "missing"]),
    ],
)
def test_errors_name_the_tensor(inputs: list[Tensor], field: str, words: list[str]) -> None:
    e = err(inputs)
    assert e.field == field and e.code == "invalid_request"
    for w in words:
        assert w in e.message


def test_nested_data_is_flattened_and_counted() -> None:
    assert element_count([[1, 2], [3, [4, 5]]]) == 5
    check([t(shape=(2, 4), data=[[1, 2, 3, 4], [5, 6, 7, 8]]), t("INPUT1")])
    e = err([t(shape=(2, 4), data=[[1, 2, 3, 4]]), t("INPUT1")])
    assert e.field == "inputs[0].data"


def test_unknown_output_and_data_ref() -> None:
    with pytest.raises(InvalidRequest) as exc:
        check([t(), t("INPUT1")], [OutputRequest(name="OUT9")])
    assert exc.value.field == "outputs[0].name" and "'OUT9'" in exc.value.message
    ref = Tensor(name="INPUT1", datatype="FP32", shape=[1, 4], data_ref="ok")
    check([t(), ref])
    missing = Tensor(name="INPUT1", datatype="FP32", shape=[1, 4], data_ref="gone")
    assert err([t(), missing]).field == "inputs[1].data_ref"
    neither = Tensor(name="INPUT1", datatype="FP32", shape=[1, 4])
    assert err([t(), neither]).field == "inputs[1].data"


def test_inline_limit_points_to_data_ref() -> None:
    with pytest.raises(PayloadTooLarge) as exc:
        check([t(shape=(8, 4)), t("INPUT1", shape=(8, 400))], limit=2000)
    assert "data_ref" in exc.value.message and exc.value.code == "payload_too_large"


@pytest.mark.parametrize(
    ("datatype", "data", "count", "bad"),
    [
        ("FP32", [[1.5, 2], [3, -4.25]], 4, None),
        ("FP32", [[1.0, float("nan")]], None, "element 1"),
        ("FP32", [1.0, 10**400], None, "element 1"),  # past any float: no crash
        ("FP16", [1.0, 70000.0], None, "element 1"),
        ("FP64", [1.0, True], None, "element 1"),  # a boolean is not a number
        ("INT8", [[1, 2], [3, 127]], 4, None),
        ("INT8", [[1, 2], [3, 128]], None, "element 3"),
        ("UINT8", [0, -1], None, "element 1"),
        ("INT32", [1, 2.0], None, "element 1"),
        ("BOOL", [[True], [False]], 2, None),
        ("BOOL", [True, 1], None, "element 1"),
        ("BYTES", ["a", ["b", "c"]], 3, None),
        ("BYTES", ["a", 1], None, "element 1"),
        ("FP32", [], 0, None),
        ("INT64", [[], []], 0, None),
    ],
)
def test_checked_count_fast_path_agrees_with_the_per_element_check(
    datatype: str, data: list[Any], count: int | None, bad: str | None
) -> None:
    """The C-level pass over a flat copy answers as the per-element check did: the count of
    valid data, and for invalid data the same error naming the first bad element."""
    from control_plane.services.tensors import _bad_value, _flatten, checked_count

    slow = [_bad_value(datatype, x) for x in _flatten(data)]
    first_bad = next((i for i, why in enumerate(slow) if why), None)
    if bad is None:
        assert first_bad is None and checked_count("x", "inputs[0]", datatype, data) == count
        assert count == len(slow)
    else:
        with pytest.raises(InvalidRequest, match=bad) as info:
            checked_count("x", "inputs[0]", datatype, data)
        assert info.value.field == f"inputs[0].data[{first_bad}]"
