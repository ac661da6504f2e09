"""`gpufleet-runner` CLI through typer's CliRunner: configure, status, set (argument checks;
the PATCH itself is exercised against the real control plane in tests/runner/)."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from runner.cli import app
from runner.settings import load_settings
from runner.status_server import StatusServer

cli = CliRunner()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GPUFLEET_RUNNER_CONFIG_FILE", "GPUFLEET_API_KEY", "GPUFLEET_RUNNER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_configure_yes_writes_yaml_from_flags_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    result = cli.invoke(
        app,
        [
            "configure",
            "--yes",
            "--config",
            str(path),
            "--control-plane-url",
            "http://127.0.0.1:9999",
            "--join-token",
            "jt_secret",
            "--backend",
            "mock",
            "--name",
            "host-a",
        ],
    )
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(path.read_text())
    assert data["control_plane_url"] == "http://127.0.0.1:9999"
    assert data["join_token"] == "jt_secret"
    assert data["backend"] == "mock" and data["name"] == "host-a"
    assert data["triton_image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = load_settings(path)
    assert settings.backend == "mock" and settings.join_token is not None
    assert settings.join_token.get_secret_value() == "jt_secret"


def test_configure_interactive_keeps_existing_values(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    path.write_text(yaml.safe_dump({"name": "old-name", "region": "eu-west-1"}))
    # answers: url, join token, name (keep), region (keep), backend, then defaults
    answers = "http://127.0.0.1:7000\njt_x\n\n\nprocess\n\n\n\n\n"
    result = cli.invoke(app, ["configure", "--config", str(path)], input=answers)
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(path.read_text())
    assert data["control_plane_url"] == "http://127.0.0.1:7000"
    assert (data["name"], data["region"], data["backend"]) == ("old-name", "eu-west-1", "process")


def test_configure_rejects_bad_backend(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    result = cli.invoke(app, ["configure", "--yes", "--config", str(path), "--backend", "gpu"])
    assert result.exit_code == 2
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "colour", "red"], "unknown key"),
        (["set", "max_concurrency", "lots"], "invalid value"),
        (["set", "acceptance_rate", "1.5"], "invalid value"),
        (["set", "load_control.acceptance_rate", "0.5", "--runner-id", "run_x"], "API key"),
    ],
)
def test_set_checks_arguments_before_calling(args: list[str], message: str) -> None:
    result = cli.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


@pytest.fixture
def status_server() -> Iterator[int]:
    snapshot = {
        "health": "ok",
        "name": "h",
        "runner_id": "run_1",
        "control_plane_url": "http://127.0.0.1:1",
        "triton": {"ready": True, "backend": "mock"},
        "gpus": [],
        "gpus_note": "NVMLError_LibraryNotFound",
        "models": [{"name": "add_sub", "version": "1", "state": "READY"}],
        "jobs_in_flight": [{"id": "job_1", "model": "add_sub", "running_s": 0.5}],
        "counters": {"succeeded": 4},
    }
    loop = asyncio.new_event_loop()
    server = StatusServer(lambda: snapshot, 0)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(server.stop())
        loop.close()


def test_status_json_and_table(status_server: int) -> None:
    result = cli.invoke(app, ["status", "--json", "--port", str(status_server)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["models"][0]["state"] == "READY"
    result = cli.invoke(app, ["status", "--port", str(status_server)])
    assert result.exit_code == 0, result.output
    assert "add_sub" in result.output and "job_1" in result.output and "ok" in result.output


def test_status_without_daemon_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import socket

    from runner.credentials import Credentials, save_credentials

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("GPUFLEET_RUNNER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no user runner.yaml
    result = cli.invoke(app, ["status", "--port", str(port)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "health down: no runner is running here" in out and f":{port}" in out
    assert "gpufleet-runner start" in out
    # a host that registered before says which runner it was
    (tmp_path / "state").mkdir()
    creds = Credentials("run_0123", "s3cret", "https://cp.example")
    save_credentials(tmp_path / "state" / "credentials.json", creds)
    result = cli.invoke(app, ["status", "--json", "--port", str(port)])
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert doc["health"] == "down" and "run_0123 of https://cp.example" in doc["reason"]


def test_configure_writes_the_ca_bundle_flag(tmp_path: Path) -> None:
    path = tmp_path / "runner.yaml"
    ca = tmp_path / "ca.pem"
    result = cli.invoke(app, ["configure", "--yes", "--config", str(path), "--ca-bundle", str(ca)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(path.read_text())["ca_bundle"] == str(ca)
