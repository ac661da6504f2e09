"""``gpufleet admin regions set|get|list|reset`` against the real control plane (in process,
loopback socket), on the embedded store and on DynamoDB (moto over HTTP)."""

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


@pytest.mark.parametrize("store_kind", ["sqlite", "dynamodb"])
def test_regions_set_get_list_reset(cli: Any) -> None:
    def ok(*args: str) -> Any:
        r = cli("-o", "json", *args)
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    view = ok("admin", "regions", "set", "--tenant", "acme", "--default-region", "eu-west-1")
    assert (view["scope"], view["default_region"], view["regions_allowed"]) == (
        "tenant",
        "eu-west-1",
        [],
    )
    # a second set keeps what the first one set
    view = ok(
        "admin", "regions", "set", "--tenant", "acme",
        "--region-allowed", "eu-west-1", "--region-allowed", "eu-central-1",
    )  # fmt: skip
    assert (view["default_region"], view["regions_allowed"], view["source"]) == (
        "eu-west-1",
        ["eu-west-1", "eu-central-1"],
        "stored",
    )
    key_id = ok("admin", "keys", "create", "--tenant", "acme", "--role", "user")["id"]
    view = ok("admin", "regions", "set", "--key", key_id, "--region-allowed", "eu-central-1")
    assert view["effective"]["regions_allowed"] == ["eu-central-1"]
    assert view["effective"].get("default_region") is None  # the tenant's is outside the key's
    assert ok("admin", "regions", "get", "--key", key_id)["tenant"] == "acme"
    listing = ok("admin", "regions", "list")
    assert [t["tenant"] for t in listing["tenants"]] == ["acme"]
    assert [k["key_id"] for k in listing["keys"]] == [key_id]
    r = cli("admin", "regions", "list")  # the table
    assert r.exit_code == 0 and "acme" in r.stdout and "stored" in r.stdout
    # errors: the field named by the server, and the CLI's own
    r = cli("admin", "regions", "set", "--tenant", "acme", "--default-region", "us-east-1")
    assert r.exit_code != 0 and "default_region" in r.output
    r = cli("admin", "regions", "set", "--tenant", "acme", "--default-region", "mars-1")
    assert r.exit_code != 0 and "mars-1" in r.output
    assert cli("admin", "regions", "set", "--tenant", "acme").exit_code != 0  # nothing to set
    assert cli("admin", "regions", "get").exit_code != 0  # neither --tenant nor --key
    r = cli("admin", "regions", "set", "--tenant", "acme", "--any-region", "--no-default-region")
    assert r.exit_code == 0, r.output
    assert ok("admin", "regions", "get", "--tenant", "acme")["regions_allowed"] == []
    assert ok("admin", "regions", "reset", "--key", key_id)["source"] == "none"
    assert ok("admin", "regions", "reset", "--tenant", "acme")["source"] == "none"
    assert ok("admin", "regions", "list") == {"api_version": "v1", "tenants": [], "keys": []}
