"""runner/triton_client.py ``infer`` against a real CPU Triton: the binary HTTP path (KServe
binary tensors over the runner's keep-alive client) answers exactly what the structured path
(tritonclient.grpc: InferInput, numpy, protobuf) answers, outputs and errors alike.

Each case runs both ways on the same Triton and compares: outputs (names, datatypes,
shapes, values), or the error (type, message, transient). Calls the binary path cannot carry
as the client library would (BF16, reserved or unsupported parameters, tensor parameters)
are shown to take the structured path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.tensors import TensorError
from runner.triton_client import TritonClient, _binary_request
from tests import rig

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
MODELS = ("add_sub", "upper_case")


@pytest.fixture(scope="module")
def triton(
    docker_host: str, triton_image: str, model_repository: Path
) -> Iterator[rig.TritonContainer]:
    with rig.triton_container(
        docker_host,
        model_repository,
        rig.free_port(),
        rig.free_port(),
        rig.free_port(),
        image=triton_image,
        load_models=MODELS,
        startup_timeout=120,
    ) as server:
        yield server


def _client(triton: rig.TritonContainer) -> TritonClient:
    return TritonClient(
        protocol="grpc",
        http_port=triton.http_port,
        grpc_port=triton.grpc_port,
        metrics_port=triton.metrics_port,
        repository_key="unused",
    )


def _outcome(coro: Any) -> Any:
    """The outputs as plain dicts, or the error as (type, message, transient)."""
    try:
        out = asyncio.run(coro)
    except InferError as exc:
        return ("InferError", str(exc), exc.transient)
    except TensorError as exc:
        return ("TensorError", str(exc), None)
    return [t.model_dump(exclude_none=True) for t in out]


def _both(
    triton: rig.TritonContainer,
    inputs: list[Tensor],
    outputs: list[OutputRequest] | None = None,
    parameters: dict[str, Any] | None = None,
    model: str = "add_sub",
    version: str = "1",
) -> tuple[Any, Any]:
    async def run(structured: bool) -> list[Tensor]:
        client = _client(triton)
        try:
            if structured:
                return await client._infer_structured(
                    model, version, inputs, outputs, parameters or {}, 30.0
                )
            out = await client.infer(model, version, inputs, outputs, parameters or {}, 30.0)
            assert client._raw_session is not None, "the binary path was not taken"
            return out
        finally:
            await client.aclose()

    return _outcome(run(False)), _outcome(run(True))


def _fp32(name: str, data: list[Any], shape: list[int] | None = None) -> Tensor:
    return Tensor(name=name, datatype="FP32", shape=shape or [1, len(data)], data=data)


def test_same_outputs_as_the_structured_path(triton: rig.TritonContainer) -> None:
    a = [0.1, -2.5, 3.0e38, 7]
    b = [1e-45, 0.3333333333, -1.0, 2]
    binary, structured = _both(triton, [_fp32("INPUT0", a), _fp32("INPUT1", b)])
    assert binary == structured
    assert [t["name"] for t in binary] == ["OUTPUT0", "OUTPUT1"]
    assert binary[0]["shape"] == [1, 4] and binary[0]["datatype"] == "FP32"


def test_nested_data_requested_outputs_and_parameters(triton: rig.TritonContainer) -> None:
    a, b = [[1.5, 2.5, 3.5, 4.5], [0, 0, 0, 1]], [[1, 1, 1, 1], [2, 2, 2, 2]]
    inputs = [_fp32("INPUT0", a, [2, 4]), _fp32("INPUT1", b, [2, 4])]
    binary, structured = _both(
        triton, inputs, [OutputRequest(name="OUTPUT1")], {"note": "x", "n": 3, "f": 0.5}
    )
    assert binary == structured
    assert [t["name"] for t in binary] == ["OUTPUT1"]
    assert binary[0]["data"] == [0.5, 1.5, 2.5, 3.5, -2, -2, -2, -1]


def test_bytes_tensors(triton: rig.TritonContainer) -> None:
    text = Tensor(name="TEXT", datatype="BYTES", shape=[3], data=["hello", "straße", ""])
    binary, structured = _both(triton, [text], model="upper_case")
    assert binary == structured
    assert binary[0]["data"] == ["HELLO", "STRASSE", ""]


@pytest.mark.parametrize(
    "case",
    [
        "wrong_shape",
        "wrong_datatype",
        "unknown_input",
        "missing_input",
        "unknown_output",
        "unknown_version",
        "data_count",
        "bad_value",
    ],
)
def test_same_errors_as_the_structured_path(triton: rig.TritonContainer, case: str) -> None:
    a, b = _fp32("INPUT0", [1, 2, 3, 4]), _fp32("INPUT1", [1, 2, 3, 4])
    outputs: list[OutputRequest] | None = None
    version = "1"
    if case == "wrong_shape":
        inputs = [_fp32("INPUT0", [1, 2, 3], [1, 3]), b]
    elif case == "wrong_datatype":
        inputs = [Tensor(name="INPUT0", datatype="INT32", shape=[1, 4], data=[1, 2, 3, 4]), b]
    elif case == "unknown_input":
        inputs = [a, b, _fp32("EXTRA", [1, 2, 3, 4])]
    elif case == "missing_input":
        inputs = [a]
    elif case == "unknown_output":
        inputs, outputs = [a, b], [OutputRequest(name="NOPE")]
    elif case == "unknown_version":
        inputs, version = [a, b], "7"
    elif case == "data_count":
        inputs = [_fp32("INPUT0", [1, 2, 3], [1, 4]), b]
    else:
        inputs = [_fp32("INPUT0", [1, "x", 3, 4]), b]
    binary, structured = _both(triton, inputs, outputs, version=version)
    assert isinstance(binary, tuple), binary
    assert binary == structured


@pytest.mark.parametrize(
    "inputs, outputs, parameters",
    [
        ([Tensor.model_construct(name="X", datatype="BF16", shape=[1], data=[1.0])], None, {}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0], parameters={"p": 1})], None, {}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])], None, {"priority": 1}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])], None, {"triton_x": 1}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])], None, {"l": [1]}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])], None, {"n": 2**64}),
        ([Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])], None, {"f": float("nan")}),
        (
            [Tensor(name="X", datatype="FP32", shape=[1], data=[1.0])],
            [OutputRequest(name="Y", parameters={"classification": 2})],
            {},
        ),
    ],
)
def test_calls_the_binary_path_cannot_carry_stay_structured(
    inputs: list[Tensor], outputs: list[OutputRequest] | None, parameters: dict[str, Any]
) -> None:
    assert _binary_request(inputs, outputs, parameters) is None


def test_inputs_over_the_size_cap_stay_structured(monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.triton_client as tc

    monkeypatch.setattr(tc, "MAX_BINARY_BODY", 15)
    assert _binary_request([_fp32("A", [1, 2, 3])], None, {}) is not None  # 12 bytes
    assert _binary_request([_fp32("A", [1, 2, 3]), _fp32("B", [1])], None, {}) is None


def test_binary_request_layout() -> None:
    body, size = _binary_request(
        [_fp32("A", [1, 2]), Tensor(name="T", datatype="BYTES", shape=[1], data=["hi"])],
        [OutputRequest(name="B")],
        {"k": "v"},
    ) or (b"", 0)
    import json

    head = json.loads(body[:size])
    assert head == {
        "inputs": [
            {
                "name": "A",
                "shape": [1, 2],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 8},
            },
            {"name": "T", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
        ],
        "outputs": [{"name": "B", "parameters": {"binary_data": True}}],
        "parameters": {"k": "v", "binary_data_output": True},
    }
    assert body[size:] == b"\x00\x00\x80?\x00\x00\x00@" + b"\x02\x00\x00\x00hi"
