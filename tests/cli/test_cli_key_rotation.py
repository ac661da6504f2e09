"""``gpufleet admin keys rotate`` and the SDK's ``admin.rotate_api_key`` against the real
control plane on a loopback socket (issue 12 item 13); join-token use limits from the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet import Client
from gpufleet.cli import app, hoist_output
from typer.testing import CliRunner


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    for var in ("GPUFLEET_URL", "GPUFLEET_API_KEY", "GPUFLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, hoist_output(list(args)))


def _exchange(url: str, key: str) -> int:
    return httpx.post(f"{url}/v1/auth/token", json={"api_key": key}, timeout=10).status_code


def test_cli_rotates_a_key_and_limits_join_tokens(cli: Any, cp_url: str, admin_key: str) -> None:
    assert cli("login", "--url", cp_url, "--api-key", admin_key).exit_code == 0
    made = json.loads(cli("-o", "json", "admin", "keys", "create", "--tenant", "acme",
                          "--role", "user").stdout)  # fmt: skip
    r = cli("admin", "keys", "rotate", made["id"], "--old-valid-for", "0")
    assert r.exit_code == 0, r.output
    new_key = r.stdout.strip()  # the whole key alone on stdout
    assert new_key.startswith(f"gf_{made['id']}_") and new_key != made["api_key"]
    assert _exchange(cp_url, new_key) == 200
    assert _exchange(cp_url, made["api_key"]) == 401  # --old-valid-for 0: stopped at once
    r = cli("admin", "keys", "rotate", "key_nope")
    assert r.exit_code != 0

    token = json.loads(cli("-o", "json", "admin", "join-token", "--max-uses", "2").stdout)
    assert token["max_uses"] == 2
    listed = json.loads(cli("-o", "json", "admin", "join-tokens", "list").stdout)["tokens"]
    assert [(t["uses"], t["max_uses"]) for t in listed if t["id"] == token["id"]] == [(0, 2)]


def test_sdk_rotates_a_key_keeping_the_old_one_for_a_while(cp_url: str, admin_key: str) -> None:
    with Client(cp_url, api_key=admin_key, timeout=30.0) as admin:
        made = admin.admin.create_api_key("acme", "user", "svc")
        rotated = admin.admin.rotate_api_key(made.id, old_valid_for_s=600)
        assert rotated.id == made.id and rotated.old_valid_until
        assert _exchange(cp_url, rotated.api_key) == 200
        assert _exchange(cp_url, made.api_key) == 200  # within its 600 s
        [view] = [k for k in admin.admin.list_api_keys() if k.id == made.id]
        assert view.previous_valid_until == rotated.old_valid_until
