"""The credential store: platform location, 0600, round trip."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
from gpufleet import config


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
