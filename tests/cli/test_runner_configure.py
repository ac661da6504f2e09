"""`gpufleet-runner configure` checks as it goes against a real control plane on a socket:
the URL's form, the control plane answering, the join token's look, Docker answering;
writes absolute paths and typed values, and ends with the command to run next."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from gpufleet import Client
from typer.testing import CliRunner

from runner.cli import app

cli = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GPUFLEET_RUNNER_CONFIG_FILE", "GPUFLEET_RUNNER_BACKEND", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


def test_configure_checks_and_says_what_next(cp_url: str, admin_key: str, tmp_path: Path) -> None:
    with Client(cp_url, api_key=admin_key) as admin:
        token = admin.admin.create_join_token().join_token
    path = tmp_path / "runner.yaml"
    args = ["configure", "--yes", "--config", str(path), "--control-plane-url", cp_url]
    args += ["--join-token", token, "--backend", "docker"]
    args += ["--model-repository", "models", "--status-port", "8799"]
    sock = tmp_path / "no-docker.sock"
    r = cli.invoke(app, args, env={"GPUFLEET_RUNNER_DOCKER_HOST": f"unix://{sock}"})
    assert r.exit_code == 0, r.output
    flat = "".join(r.output.split())  # rich folds long paths anywhere at 80 columns
    assert f"controlplaneat{cp_url}:answers" in flat and ":accepted(region" in flat, r.output
    assert f"Dockerat unix://{sock}doesnotanswer".replace(" ", "") in flat, r.output
    assert "--backendprocess" in flat and f"next:gpufleet-runnerstart--config{path}" in flat
    data = yaml.safe_load(path.read_text())
    assert data["model_repository"] == str(tmp_path / "models")  # absolute
    assert data["status_port"] == 8799 and isinstance(data["status_port"], int)


def test_configure_warns_about_a_silent_control_plane_and_a_strange_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runner.yaml"
    r = cli.invoke(
        app,
        ["configure", "--yes", "--config", str(path), "--control-plane-url",
         "http://127.0.0.1:9", "--join-token", "not-a-token", "--backend", "mock"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "the control plane at http://127.0.0.1:9 does not answer" in out
    assert "does not look like one (gfj_…)" in out


def test_configure_refuses_a_malformed_url_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    r = cli.invoke(
        app, ["configure", "--yes", "--config", str(path), "--control-plane-url", "cp:8080"]
    )
    assert r.exit_code == 2
    assert "invalid control_plane_url" in r.output and "http:// or https://" in r.output
    assert "pydantic" not in r.output and not path.exists()
