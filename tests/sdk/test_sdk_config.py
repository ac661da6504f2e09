"""The credential store: platform location, 0600, round trip."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from gpufleet import Client, config


def test_override_dir_and_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "cfg"))
    assert config.load_credentials() is None
    path = config.save_credentials(config.Credentials(url="http://127.0.0.1:1", api_key="gf_x"))
    assert path == tmp_path / "cfg" / "credentials.json"
    assert config.load_credentials() == config.Credentials("http://127.0.0.1:1", "gf_x", None)
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_existing_wider_file_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    config.save_credentials(config.Credentials(url="http://h"), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert config.load_credentials(path) == config.Credentials("http://h")


def test_garbage_file_is_no_credentials(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("not json")
    assert config.load_credentials(path) is None


def test_platform_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GPUFLEET_CONFIG_DIR", raising=False)
    monkeypatch.setattr(config.sys, "platform", "win32")
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert config.config_dir() == tmp_path / "Roaming" / "gpufleet"
    monkeypatch.setattr(config.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config.config_dir() == tmp_path / "xdg" / "gpufleet"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert config.config_dir() == Path.home() / ".config" / "gpufleet"


def test_resolve_combines_arguments_env_and_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.json"
    for var in ("GPUFLEET_URL", "GPUFLEET_API_KEY", "GPUFLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="GPUFLEET_URL"):
        config.resolve(path=path)
    config.save_credentials(config.Credentials(url="http://cp:8080", api_key="gf_saved"), path)
    # nothing given: the login
    assert config.resolve(path=path) == config.Credentials("http://cp:8080", "gf_saved")
    # a URL flag for the same control plane keeps the saved key
    assert config.resolve("http://cp:8080/", path=path).api_key == "gf_saved"
    # another control plane never gets the saved key
    assert config.resolve("http://other:8080", path=path).api_key is None
    # env beats the login, arguments beat env
    monkeypatch.setenv("GPUFLEET_API_KEY", "gf_env")
    assert config.resolve(path=path) == config.Credentials("http://cp:8080", "gf_env")
    assert config.resolve(api_key="gf_arg", path=path).api_key == "gf_arg"
    monkeypatch.setenv("GPUFLEET_URL", "http://env:1")
    assert config.resolve(path=path) == config.Credentials("http://env:1", "gf_env")
    monkeypatch.delenv("GPUFLEET_API_KEY")
    monkeypatch.setenv("GPUFLEET_TOKEN", "tok")
    assert config.resolve(path=path) == config.Credentials("http://env:1", None, "tok")


def test_client_without_arguments_reads_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("GPUFLEET_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("GPUFLEET_API_KEY", "gf_env")
    with Client() as client:
        assert client._core.base_url == "http://127.0.0.1:9"
        assert client._core.tokens.api_key == "gf_env"


def test_region_setting_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    region_setting = config.region_setting
    monkeypatch.delenv("GPUFLEET_REGION", raising=False)
    monkeypatch.delenv("GPUFLEET_REGIONS_ALLOWED", raising=False)
    assert region_setting() == (None, None)
    monkeypatch.setenv("GPUFLEET_REGION", "eu-west-1")
    monkeypatch.setenv("GPUFLEET_REGIONS_ALLOWED", "eu-west-1, eu-central-1,")
    assert region_setting() == ("eu-west-1", ["eu-west-1", "eu-central-1"])
    assert region_setting("us-east-1", ["us-east-1"]) == ("us-east-1", ["us-east-1"])
    with Client("http://127.0.0.1:9", api_key="gf_abc_def") as client:
        core = client._core
        assert (core.region, core.regions_allowed) == ("eu-west-1", ["eu-west-1", "eu-central-1"])
