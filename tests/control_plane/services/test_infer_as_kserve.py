"""When a v1 synchronous call is sent to the runner as KServe JSON (passed through to Triton)
instead of a structured frame: only when Triton reads it exactly as the structured path's
client library would send it (services/inference.py ``_as_kserve_json``)."""

from __future__ import annotations

from typing import Any

import pytest
from gpufleet.wire import JobRequest

from control_plane.services.inference import _as_kserve_json

OUTPUTS = [{"name": "OUTPUT0", "datatype": "FP32", "dims": [4]}]


def req(**over: Any) -> JobRequest:
    t = {"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}
    t.update(over.pop("tensor", {}))
    return JobRequest.model_validate({"model": "m", "inputs": [t], **over})


def test_plain_numeric_call_goes_as_kserve_json() -> None:
    assert _as_kserve_json(req(), OUTPUTS)
    assert _as_kserve_json(req(outputs=[{"name": "OUTPUT0"}], parameters={"custom": 1}), OUTPUTS)
    for dt in ("BOOL", "INT8", "UINT64", "FP64"):
        data = [True] * 4 if dt == "BOOL" else [1, 2, 3, 4]
        assert _as_kserve_json(req(tensor={"datatype": dt, "data": data}), OUTPUTS)


@pytest.mark.parametrize(
    ("call", "outputs"),
    [
        ({"tensor": {"datatype": "FP16"}}, OUTPUTS),  # no JSON form in Triton
        ({"tensor": {"datatype": "BYTES", "data": ["a", "b", "c", "d"]}}, OUTPUTS),
        ({}, [{"name": "OUTPUT0", "datatype": "BYTES", "dims": [4]}]),  # an output too
        ({}, [{"name": "OUTPUT0", "datatype": "BF16", "dims": [4]}]),
        ({"tensor": {"parameters": {"shared_memory_region": "r"}}}, OUTPUTS),
        ({"outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}, OUTPUTS),
        ({"parameters": {"binary_data_output": True}}, OUTPUTS),
        ({"parameters": {"sequence_id": 7}}, OUTPUTS),
        ({"parameters": {"triton_enable_empty_final_response": True}}, OUTPUTS),
    ],
)
def test_anything_else_keeps_the_structured_frame(
    call: dict[str, Any], outputs: list[dict[str, Any]]
) -> None:
    assert not _as_kserve_json(req(**call), outputs)
