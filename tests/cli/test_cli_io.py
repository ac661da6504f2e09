"""CLI input parsing, exit codes and usage errors (no server needed)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
from gpufleet import errors
from gpufleet._cli_io import exit_code_for, parse_inputs, parse_pairs
from gpufleet.cli import app
from typer.testing import CliRunner


def test_inputs_from_npy_json_and_declared_types(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(4, dtype=np.int16))
    out = parse_inputs(
        [f"A=@{tmp_path / 'a.npy'}", "B=[[1, 2]]", "C:FP16=[0.5]", 'D=["x"]'],
        {"B": "FP32", "D": "BYTES"},
    )
    assert out["A"].dtype == np.int16 and out["A"].tolist() == [0, 1, 2, 3]
    assert out["B"].dtype == np.float32 and out["B"].shape == (1, 2)
    assert out["C"].dtype == np.float16
    assert out["D"].dtype == object


@pytest.mark.parametrize("bad", ["A", "=1", "A=[1,", "A=@/nonexistent.npy"])
def test_bad_inputs_are_usage_errors(bad: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_inputs([bad])


def test_pairs() -> None:
    assert parse_pairs(["a=b", "c=d=e"], "--tag") == {"a": "b", "c": "d=e"}
    with pytest.raises(typer.BadParameter):
        parse_pairs(["nope"], "--tag")


def _api(cls: type[errors.APIError]) -> errors.APIError:
    return cls("x", response=httpx.Response(400))


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_api(errors.AuthError), 3),
        (_api(errors.ForbiddenError), 3),
        (_api(errors.NotFoundError), 4),
        (_api(errors.ModelNotFoundError), 4),
        (_api(errors.ConflictError), 5),
        (_api(errors.ValidationError), 6),
        (_api(errors.PayloadTooLargeError), 6),
        (_api(errors.RateLimitedError), 7),
        (_api(errors.UnavailableError), 7),
        (_api(errors.GatewayTimeoutError), 7),
        (errors.ConnectionError("down"), 7),
        (_api(errors.ServerError), 1),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_usage_errors_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path))
    for var in ("GPUFLEET_URL", "GPUFLEET_API_KEY", "GPUFLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["jobs", "get", "job_1"]).exit_code == 2  # no URL / credentials
    assert runner.invoke(app, ["--output", "xml", "runners", "list"]).exit_code == 2
    assert runner.invoke(app, ["jobs", "frobnicate"]).exit_code == 2


def test_unreachable_server_exits_7_with_json_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path))
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = CliRunner().invoke(
        app, ["--url", url, "--api-key", "gf_whatever", "-o", "json", "jobs", "get", "job_1"]
    )
    assert result.exit_code == 7, result.output
    assert '"error"' in result.output
