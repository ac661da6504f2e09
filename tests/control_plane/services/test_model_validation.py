"""Upload validation of model layouts and configs, and the example models' Python code."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control_plane.errors import InvalidRequest
from control_plane.services import modelconfig

REPO = Path(__file__).resolve().parents[3] / "model_repository"

BASE = """
name: "m"
backend: "python"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def field_of(text: str) -> str | None:
    with pytest.raises(InvalidRequest) as exc:
        modelconfig.parse_config(text, "m")
    return exc.value.field


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE.replace('backend: "python"', ""), "config.pbtxt.backend"),
        (BASE.replace('"python"', '"pyhton"'), "config.pbtxt.backend"),
        (BASE.replace('backend: "python"', 'platform: "onnx"'), "config.pbtxt.platform"),
        (
            BASE.replace('backend: "python"', 'backend: "python" platform: "tensorrt_plan"'),
            "config.pbtxt.platform",
        ),
        (BASE.replace("max_batch_size: 4", "max_batch_size: -1"), "config.pbtxt.max_batch_size"),
        (
            BASE.replace("max_batch_size: 4", "max_batch_size: 0") + "dynamic_batching { }",
            "config.pbtxt.max_batch_size",
        ),
        (
            BASE + "dynamic_batching { preferred_batch_size: [ 8 ] }",
            "config.pbtxt.dynamic_batching.preferred_batch_size",
        ),
        (
            BASE.replace("data_type: TYPE_FP32 dims: [ 2 ] } ]\noutput", "dims: [ 2 ] } ]\noutput"),
            "config.pbtxt.input[0].data_type",
        ),
        (
            BASE.replace("dims: [ 2 ] } ]\noutput", "dims: [ 0 ] } ]\noutput"),
            "config.pbtxt.input[0].dims",
        ),
        (
            BASE.replace("dims: [ 2 ] } ]\noutput", "dims: [ -2 ] } ]\noutput"),
            "config.pbtxt.input[0].dims",
        ),
        (
            BASE.replace("dims: [ 2 ] } ]\noutput", "dims: [ ] } ]\noutput"),
            "config.pbtxt.input[0].dims",
        ),
        (
            BASE.replace(
                "dims: [ 2 ] } ]\noutput", f"dims: [ {', '.join(['1'] * 16)} ] }} ]\noutput"
            ),
            "config.pbtxt.input[0].dims",
        ),
        (
            BASE.replace('output [ { name: "OUT"', 'output [ { name: ""'),
            "config.pbtxt.output[0].name",
        ),
        (
            BASE.replace(
                'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]',
                'input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] },'
                ' { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]',
            ),
            "config.pbtxt.input[1].name",
        ),
        (
            BASE.replace('output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]', ""),
            "config.pbtxt.output",
        ),
        (BASE + 'default_model_filename: "../x.py"', "config.pbtxt.default_model_filename"),
        ('name: "m" backend: "python" max_batch_size: 4 input [', "config.pbtxt"),
    ],
)
def test_config_errors_name_the_field(text: str, field: str) -> None:
    assert field_of(text) == field


def test_valid_configs_pass() -> None:
    parsed = modelconfig.parse_config(
        BASE + "dynamic_batching { preferred_batch_size: [2, 4] }", "m"
    )
    assert parsed.backend == "python" and parsed.max_batch_size == 4
    # scalars per batch item: dims [1] with an empty reshape; variable dims are -1
    scalar = BASE.replace(
        "dims: [ 2 ] } ]\noutput", "dims: [ ] reshape: { shape: [ ] } } ]\noutput"
    )
    modelconfig.parse_config(scalar, "m")
    modelconfig.parse_config(BASE.replace("dims: [ 2 ]", "dims: [ -1, 3 ]"), "m")
    onnx = BASE.replace('backend: "python"', 'platform: "onnxruntime_onnx"')
    modelconfig.parse_config(onnx, "m")
    both = BASE.replace('backend: "python"', 'backend: "onnxruntime" platform: "onnxruntime_onnx"')
    modelconfig.parse_config(both, "m")
    ensemble = 'name: "m" platform: "ensemble" max_batch_size: 0'
    modelconfig.parse_config(ensemble, "m")


def test_default_model_file_unless_configured_otherwise() -> None:
    parsed = modelconfig.parse_config(BASE, "m")
    with pytest.raises(InvalidRequest) as exc:
        modelconfig.check_default_model_file(parsed, ["config.pbtxt", "1/other.py"], "1")
    assert "1/model.py" in exc.value.message and exc.value.field == "files"
    modelconfig.check_default_model_file(parsed, ["config.pbtxt", "1/model.py"], "1")
    named = modelconfig.parse_config(BASE + 'default_model_filename: "other.py"', "m")
    modelconfig.check_default_model_file(named, ["config.pbtxt", "1/other.py"], "1")
    savedmodel = modelconfig.parse_config(
        BASE.replace('backend: "python"', 'platform: "tensorflow_savedmodel"'), "m"
    )
    modelconfig.check_default_model_file(
        savedmodel, ["config.pbtxt", "1/model.savedmodel/saved_model.pb"], "1"
    )


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        (["config.pbtxt", "1/model.py", "1/model.py/x"], "files[2].path"),
        (["config.pbtxt", "1/" + "a" * 256], "files[1].path"),
        (["config.pbtxt", "1/a\x7fb"], "files[1].path"),
        (["config.pbtxt", "1/../../etc/passwd"], "files[1].path"),
        (["config.pbtxt", "/1/model.py"], "files[1].path"),
        (["config.pbtxt", "C:/1/model.py"], "files[1].path"),
        (["config.pbtxt", "1\\model.py"], "files[1].path"),
        (["config.pbtxt", "2/model.py"], "files[1].path"),
        (["1/model.py"], "files"),
        (["config.pbtxt"], "files"),
    ],
)
def test_layout_errors_name_the_file(paths: list[str], field: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        modelconfig.validate_layout(paths, "1")
    assert exc.value.field == field


# ------------------------------------------------------------------ example models' code


class FakeTensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self.name, self.value = name, value

    def as_numpy(self) -> np.ndarray:
        return self.value


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor]) -> None:
        self.outputs = {t.name: t.value for t in output_tensors}


@pytest.fixture
def pb_utils() -> Iterator[None]:
    """A stand-in for Triton's ``triton_python_backend_utils`` (only what the models use)."""
    mod: Any = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = FakeTensor
    mod.InferenceResponse = FakeResponse
    mod.get_input_tensor_by_name = lambda request, name: request[name]
    sys.modules["triton_python_backend_utils"] = mod
    yield
    del sys.modules["triton_python_backend_utils"]


def load_model(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    if hasattr(model, "initialize"):
        model.initialize({"model_repository": str(REPO / name), "model_version": "1"})
    return model


def test_upper_case_model(pb_utils: None) -> None:
    model = load_model("upper_case")
    text = np.array([b"hello", "straße".encode(), b"gpu fleet"], dtype=np.object_)
    (out,) = model.execute([{"TEXT": FakeTensor("TEXT", text)}])
    assert out.outputs["UPPER"].tolist() == [b"HELLO", b"STRASSE", b"GPU FLEET"]


def test_iris_classifier_model(pb_utils: None) -> None:
    model = load_model("iris_classifier")
    x = np.array([[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]], np.float32)
    (out,) = model.execute([{"FEATURES": FakeTensor("FEATURES", x)}])
    assert out.outputs["LABEL"].tolist() == [[b"setosa"], [b"versicolor"], [b"virginica"]]
    probs = out.outputs["PROBABILITIES"]
    assert probs.shape == (3, 3) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # on the whole data set (not only the held-out rows) it is right at least 95% of the time
    rows = (REPO / "iris_classifier" / "iris.csv").read_text().splitlines()[1:]
    feats = np.array([[float(v) for v in r.split(",")[:4]] for r in rows], np.float32)
    (out,) = model.execute([{"FEATURES": FakeTensor("FEATURES", feats)}])
    truth = [r.split(",")[4].encode() for r in rows]
    right = sum(
        label[0] == t for label, t in zip(out.outputs["LABEL"].tolist(), truth, strict=True)
    )
    assert right / len(rows) >= 0.95
