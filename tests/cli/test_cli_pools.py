"""``gpufleet admin pools`` against the real control plane (in process, loopback socket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gpufleet.cli import app
from typer.testing import CliRunner


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cp_url: str, admin_key: str) -> Any:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, ["--url", cp_url, "--api-key", admin_key, *args])

    return run


def test_put_get_list_delete(cli: Any, tmp_path: Path) -> None:
    spec = tmp_path / "pool.json"
    spec.write_text(
        json.dumps(
            {
                "max_hosts": 2,
                "region": "eu-west-1",
                "provider": {
                    "kind": "docker",
                    "settings": {"image": "gpufleet/runner:1", "control_plane_url": "http://x"},
                },
            }
        )
    )
    r = cli("-o", "json", "admin", "pools", "put", "cpu", str(spec))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["spec"]["max_hosts"] == 2
    r = cli("-o", "json", "admin", "pools", "get", "cpu")
    assert r.exit_code == 0 and json.loads(r.stdout)["name"] == "cpu"
    r = cli("admin", "pools", "list")
    assert r.exit_code == 0 and "cpu" in r.stdout
    spec.write_text(json.dumps({"max_hosts": 2, "provider": {"kind": "docker"}}))
    r = cli("admin", "pools", "put", "cpu", str(spec))
    assert r.exit_code != 0 and "provider.settings.image" in r.output
    spec.write_text("{not json")
    assert cli("admin", "pools", "put", "cpu", str(spec)).exit_code != 0
    r = cli("admin", "pools", "delete", "nope")  # (deleting asks the engine for hosts)
    assert r.exit_code != 0 and "no pool 'nope'" in r.output
    assert cli("admin", "pools", "get", "nope").exit_code != 0
