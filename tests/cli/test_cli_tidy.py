"""The CLI's first-hour tidy-ups: --version, -o json anywhere (usage errors too), no raw
pydantic text, case-insensitive status filters, whole secrets, --output-file, and the
commands that were missing (runners get/drain/delete, models deployment/undeploy/delete
--yes, webhooks secret/rotate, jobs submit --ttl-s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpufleet.cli import app, hoist_output
from typer.testing import CliRunner

from tests.helpers.fake_runner import FakeRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*args, input=None)`` -> typer Result, arguments arranged as ``main`` does
    (``-o json`` anywhere), a private config dir and no env credentials."""
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    for var in ("GPUFLEET_URL", "GPUFLEET_API_KEY", "GPUFLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, hoist_output(list(args)), input=input)

    return run


def gpufleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI entry point (``main``) as a process."""
    return subprocess.run(
        [sys.executable, "-m", "gpufleet.cli", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_and_json_usage_errors_anywhere(tmp_path: Path) -> None:
    env = {"GPUFLEET_CONFIG_DIR": str(tmp_path), "GPUFLEET_URL": "", "GPUFLEET_API_KEY": ""}
    r = gpufleet("--version", env=env)
    assert r.returncode == 0 and r.stdout.startswith("gpufleet ")
    for args in (
        ["jobs", "list", "--status", "nope", "-o", "json"],
        ["-o", "json", "jobs", "bogus"],
        ["jobs", "list", "--output=json"],  # no URL configured: a usage error too
    ):
        r = gpufleet(*args, env=env)
        assert r.returncode == 2, (args, r.stderr)
        err = json.loads(r.stderr)["error"]
        assert err["code"] == "usage" and err["message"], args
    assert (
        "QUEUED, RUNNING"
        in json.loads(gpufleet("jobs", "list", "--status", "x", "-o", "json", env=env).stderr)[
            "error"
        ]["message"]
    )
    r = gpufleet("jobs", "list", "--status", "nope", env=env)
    assert r.returncode == 2 and "must be one of" in r.stderr and "{" not in r.stderr


def test_tidy_commands_against_a_control_plane(
    cli: Any, cp_url: str, admin_key: str, add_sub_dir: Path, tmp_path: Path
) -> None:
    assert cli("login", "--url", cp_url, "--api-key", admin_key).exit_code == 0
    # pydantic's report never reaches the user: one line naming the field
    r = cli("admin", "keys", "create", "--tenant", "acme", "--role", "superuser")
    assert r.exit_code == 2 and "role:" in r.stderr, r.output
    assert "errors.pydantic.dev" not in r.output and "validation error" not in r.output
    assert cli("models", "push", str(add_sub_dir)).exit_code == 0

    # the whole secret, on its own line, usable as is
    r = cli("admin", "keys", "create", "--tenant", "acme", "--role", "user")
    assert r.exit_code == 0, r.output
    key = r.stdout.strip()
    assert key.startswith("gf_key_") and len(key) > 80 and "…" not in key
    r = cli("--api-key", key, "--url", cp_url, "-o", "json", "token")
    assert r.exit_code == 0, r.output
    listed = json.loads(cli("-o", "json", "admin", "keys", "list").stdout)["keys"]
    assert key.split("_")[1] + "_" + key.split("_")[2] in {k["id"] for k in listed}
    assert key not in cli("admin", "keys", "list").stdout  # never the secret

    # deployment / undeploy (the push made an implicit one)
    r = cli("models", "deployment", "add_sub", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["implicit"] is True
    r = cli("-o", "json", "models", "undeploy", "add_sub")
    assert r.exit_code == 0 and json.loads(r.stdout)["desired"]["max_replicas"] == 0
    assert cli("models", "deploy", "add_sub", "--min", "0", "--max", "1").exit_code == 0

    # webhooks secret / rotate
    first = cli("webhooks", "secret").stdout.strip()
    second = cli("webhooks", "rotate").stdout.strip()
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second

    made = json.loads(cli("-o", "json", "admin", "join-token").stdout)
    token = made["join_token"]
    spare = json.loads(cli("-o", "json", "admin", "join-token", "--region", "us").stdout)
    listed = json.loads(cli("-o", "json", "admin", "join-tokens", "list").stdout)["tokens"]
    assert {t["id"] for t in listed} == {made["id"], spare["id"]}
    r = cli("-o", "json", "admin", "join-tokens", "revoke", spare["id"])
    assert r.exit_code == 0 and json.loads(r.stdout)["revoked"] is True
    with FakeRunner(cp_url, token) as runner:
        r = cli(
            "jobs", "submit", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]",
            "--ttl-s", "120", "--wait", "-o", "json",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["status"] == "SUCCEEDED"
        out = tmp_path / "out.npz"
        r = cli(
            "infer", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]",
            "--output-file", str(out),
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        saved = np.load(out)
        assert saved["OUTPUT0"].dtype == np.float32 and saved["OUTPUT0"].shape == (1, 4)
        np.testing.assert_array_equal(saved["OUTPUT0"], [[2, 3, 4, 5]])

        # status filters in any case
        r = cli("-o", "json", "jobs", "list", "--status", "succeeded")
        assert r.exit_code == 0 and len(json.loads(r.stdout)["jobs"]) == 2

        r = cli("runners", "list")
        assert r.exit_code == 0 and "backend" in r.stdout
        r = cli("-o", "json", "runners", "get", runner.runner_id)
        assert r.exit_code == 0 and json.loads(r.stdout)["id"] == runner.runner_id
        r = cli("-o", "json", "runners", "drain", runner.runner_id)
        assert r.exit_code == 0 and json.loads(r.stdout)["config"]["drain"] is True
        r = cli("-o", "json", "runners", "drain", runner.runner_id, "--undo")
        assert r.exit_code == 0 and json.loads(r.stdout)["config"]["drain"] is False
        assert cli("runners", "get", "run_missing").exit_code == 4
        r = cli("runners", "delete", runner.runner_id, input="n\n")
        assert r.exit_code == 1  # asked, refused: nothing revoked
        r = cli("-o", "json", "runners", "delete", runner.runner_id, "--yes")
        assert r.exit_code == 0 and json.loads(r.stdout)["revoked"] is True

    # models delete asks unless --yes
    r = cli("models", "delete", "add_sub", "1", input="n\n")
    assert r.exit_code == 1
    assert "1:READY" in cli("models", "list").stdout
    assert cli("models", "delete", "add_sub", "1", "--yes").exit_code == 0


@pytest.mark.parametrize(
    ("argv", "hoisted"),
    [
        (["jobs", "list", "-o", "json"], ["-o", "json", "jobs", "list"]),
        (["jobs", "list", "--output=json"], ["--output=json", "jobs", "list"]),
        (["infer", "m", "--", "-o", "x"], ["infer", "m", "--", "-o", "x"]),
    ],
)
def test_output_option_is_hoisted(argv: list[str], hoisted: list[str]) -> None:
    assert hoist_output(argv) == hoisted
