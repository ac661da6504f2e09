"""Runner settings precedence (flags > env > YAML > defaults) and the 0600 credentials file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from runner.credentials import (
    Credentials,
    delete_credentials,
    load_credentials,
    load_or_create_secret,
    save_credentials,
)
from runner.settings import DEFAULT_TRITON_IMAGE, RunnerSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("GPUFLEET_RUNNER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no ~/.config leaks in


def _yaml(tmp_path: Path, values: dict[str, object]) -> Path:
    path = tmp_path / "runner.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.backend == "docker"
    assert s.triton_image == DEFAULT_TRITON_IMAGE == "nvcr.io/nvidia/tritonserver:24.10-py3"
    assert (s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port) == (8000, 8001, 8002)
    assert s.protocol == "grpc"
    assert s.join_token is None


def test_yaml_over_defaults(tmp_path: Path) -> None:
    path = _yaml(tmp_path, {"backend": "mock", "triton_http_port": 9000, "labels": {"a": "b"}})
    s = load_settings(path)
    assert (s.backend, s.triton_http_port, s.labels) == ("mock", 9000, {"a": "b"})


def test_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _yaml(tmp_path, {"backend": "mock", "triton_http_port": 9000, "name": "from-yaml"})
    monkeypatch.setenv("GPUFLEET_RUNNER_TRITON_HTTP_PORT", "9100")
    monkeypatch.setenv("GPUFLEET_RUNNER_LABELS", '{"zone": "z1"}')
    s = load_settings(path)
    assert s.triton_http_port == 9100
    assert s.labels == {"zone": "z1"}
    assert s.backend == "mock" and s.name == "from-yaml"


def test_flags_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_RUNNER_BACKEND", "process")
    assert load_settings(backend="mock").backend == "mock"
    assert load_settings(backend=None).backend == "process"  # unset flag falls through


def test_config_file_from_env_and_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(tmp_path, {"region": "eu-west-1"})
    monkeypatch.setenv("GPUFLEET_RUNNER_CONFIG_FILE", str(path))
    assert load_settings().region == "eu-west-1"
    monkeypatch.delenv("GPUFLEET_RUNNER_CONFIG_FILE")
    default = tmp_path / "xdg" / "gpufleet" / "runner.yaml"
    default.parent.mkdir(parents=True)
    default.write_text(yaml.safe_dump({"region": "us-east-2"}))
    assert load_settings().region == "us-east-2"


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not_a_setting"):
        load_settings(_yaml(tmp_path, {"not_a_setting": 1}))


def test_every_field_is_described() -> None:
    missing = [n for n, f in RunnerSettings.model_fields.items() if not f.description]
    assert missing == []


def test_credentials_file_is_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state" / "credentials.json"
    creds = Credentials("run_1", "s3cret", "http://127.0.0.1:1")
    save_credentials(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials(path) == creds
    save_credentials(path, Credentials("run_2", "other", "http://127.0.0.1:1"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials(path).runner_id == "run_2"  # type: ignore[union-attr]
    delete_credentials(path)
    assert load_credentials(path) is None
    delete_credentials(path)  # idempotent


def test_corrupt_credentials_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{not json")
    assert load_credentials(path) is None


def test_repository_key_is_stable_and_private(tmp_path: Path) -> None:
    path = tmp_path / "key"
    key = load_or_create_secret(path)
    assert len(key) >= 24
    assert load_or_create_secret(path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
