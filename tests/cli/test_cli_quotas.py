"""``gpufleet admin quotas`` and ``gpufleet admin keys max-priority`` against the real control
plane (in process, loopback socket)."""

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


def test_quotas_set_get_list_reset(cli: Any) -> None:
    r = cli("-o", "json", "admin", "quotas", "set", "acme", "--max-queued", "50")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_queued"] == 50
    # a second set keeps what the first one set
    r = cli("-o", "json", "admin", "quotas", "set", "acme", "--weight", "2.5")
    view = json.loads(r.stdout)
    assert (view["max_queued"], view["weight"], view["own"]["max_queued"]) == (50, 2.5, 50)
    r = cli("admin", "quotas", "list")
    assert r.exit_code == 0 and "acme" in r.stdout
    r = cli("-o", "json", "admin", "quotas", "get", "acme")
    assert json.loads(r.stdout)["weight"] == 2.5
    r = cli("admin", "quotas", "set", "acme", "--weight", "0")
    assert r.exit_code != 0 and "weight" in r.output
    assert cli("admin", "quotas", "set", "acme").exit_code != 0  # nothing to set
    r = cli("-o", "json", "admin", "quotas", "reset", "acme")
    assert json.loads(r.stdout)["max_queued"] == 10_000


def test_key_max_priority(cli: Any) -> None:
    r = cli("-o", "json", "admin", "keys", "create", "--tenant", "acme", "--role", "user")
    assert r.exit_code == 0, r.output
    key_id = json.loads(r.stdout)["id"]
    r = cli("-o", "json", "admin", "keys", "max-priority", key_id, "20")
    assert r.exit_code == 0 and json.loads(r.stdout)["max_priority"] == 20
    r = cli("-o", "json", "admin", "keys", "max-priority", key_id)
    assert json.loads(r.stdout)["max_priority"] == 100
    assert cli("admin", "keys", "max-priority", key_id, "101").exit_code != 0
