"""Mock backend outputs from config.pbtxt, and the wire <-> numpy tensor conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpufleet.wire import OutputRequest, Tensor

from runner.backends.base import InferError
from runner.backends.mock_backend import MockEngine
from runner.model_repo import scan_repository
from runner.tensors import TensorError, from_numpy, to_numpy

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: {mbs}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 3 ] }} ]
output [
  {{ name: "OUT_F" data_type: TYPE_FP16 dims: [ 2, -1 ] }},
  {{ name: "OUT_S" data_type: TYPE_STRING dims: [ 1 ] }}
]
"""


def _model(repo: Path, name: str, mbs: int, versions: tuple[str, ...] = ("1",)) -> None:
    (repo / name).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(CONFIG.format(name=name, mbs=mbs))
    for v in versions:
        (repo / name / v).mkdir()


def test_scan_picks_highest_numeric_version(tmp_path: Path) -> None:
    _model(tmp_path, "m", 4, ("1", "10", "2", "notes"))
    (tmp_path / "no_config" / "1").mkdir(parents=True)
    _model(tmp_path, "no_versions", 0, ())
    assert [(m.name, m.version) for m in scan_repository(tmp_path)] == [("m", "10")]
    assert scan_repository(tmp_path / "missing") == []


async def test_outputs_shaped_from_config_with_batch(tmp_path: Path) -> None:
    _model(tmp_path, "batched", 8)
    engine = MockEngine(tmp_path)
    await engine.load_model("batched")
    assert await engine.model_ready("batched", "1")
    inputs = [Tensor(name="IN", datatype="INT32", shape=[5, 3], data=list(range(15)))]
    out = {t.name: t for t in await engine.infer("batched", "1", inputs, None, {}, 5)}
    assert out["OUT_F"].datatype == "FP16" and out["OUT_F"].shape == [5, 2, 1]
    assert out["OUT_F"].data == [0.0] * 10
    assert out["OUT_S"].datatype == "BYTES" and out["OUT_S"].shape == [5, 1]
    assert out["OUT_S"].data == [""] * 5


async def test_outputs_without_batch_and_filtered(tmp_path: Path) -> None:
    _model(tmp_path, "plain", 0)
    engine = MockEngine(tmp_path)
    await engine.load_model("plain")
    inputs = [Tensor(name="IN", datatype="INT32", shape=[3], data=[1, 2, 3])]
    out = await engine.infer("plain", "1", inputs, [OutputRequest(name="OUT_F")], {}, 5)
    assert [(t.name, t.shape) for t in out] == [("OUT_F", [2, 1])]


async def test_unknown_model(tmp_path: Path) -> None:
    engine = MockEngine(tmp_path)
    with pytest.raises(InferError, match="not in the model repository"):
        await engine.load_model("nope")
    with pytest.raises(InferError, match="unknown model"):
        await engine.infer("nope", "1", [], None, {}, 5)


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP32", [[1.5, 2.0], [3.0, 4.0]], np.float32),
        ("INT64", [1, 2, 3, 4], np.int64),
        ("BOOL", [True, False, True, False], np.bool_),
        ("UINT8", [0, 255, 1, 2], np.uint8),
    ],
)
def test_numeric_round_trip(datatype: str, data: list, dtype: type) -> None:  # type: ignore[type-arg]
    t = Tensor(name="x", datatype=datatype, shape=[2, 2], data=data)  # type: ignore[arg-type]
    arr = to_numpy(t)
    assert arr.dtype == dtype and arr.shape == (2, 2)
    back = from_numpy("x", datatype, arr)
    assert back.shape == [2, 2]
    assert back.data == np.array(data, dtype=dtype).flatten().tolist()


def test_bytes_round_trip() -> None:
    t = Tensor(name="s", datatype="BYTES", shape=[2], data=["héllo", "world"])
    arr = to_numpy(t)
    assert arr.tolist() == ["héllo".encode(), b"world"]
    assert from_numpy("s", "BYTES", arr).data == ["héllo", "world"]


def test_bad_shape_and_data_ref() -> None:
    with pytest.raises(TensorError, match="'x'"):
        to_numpy(Tensor(name="x", datatype="FP32", shape=[3], data=[1, 2]))
    with pytest.raises(TensorError, match="data_ref"):
        to_numpy(Tensor(name="x", datatype="FP32", shape=[3], data_ref="pay_1"))


async def test_echo_answers_each_job_with_its_own_inputs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "add_sub" / "1").mkdir(parents=True)
    (repo / "add_sub" / "config.pbtxt").write_text(
        (Path(__file__).resolve().parents[2] / "model_repository/add_sub/config.pbtxt").read_text()
    )
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = -a
    ins = [from_numpy("INPUT0", "FP32", a), from_numpy("INPUT1", "FP32", b)]
    echo, zeros = MockEngine(repo, "echo"), MockEngine(repo)
    for engine in (echo, zeros):
        await engine.load_model("add_sub")
    out = {t.name: to_numpy(t) for t in await echo.infer("add_sub", "1", ins, None, {}, 5)}
    np.testing.assert_array_equal(out["OUTPUT0"], a)
    np.testing.assert_array_equal(out["OUTPUT1"], b)
    plain = {t.name: to_numpy(t) for t in await zeros.infer("add_sub", "1", ins, None, {}, 5)}
    assert not plain["OUTPUT0"].any() and plain["OUTPUT0"].shape == (2, 4)
