"""The CLI against the real control plane: typer's runner in process, and once as real
subprocesses (``gpufleet`` and ``python -m control_plane serve --embedded``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gpufleet.cli import app
from typer.testing import CliRunner

from tests.helpers.fake_runner import FakeRunner
from tests.integration.conftest import READY_PREFIX

REPO = Path(__file__).resolve().parents[2]
GPUFLEET = REPO / ".venv" / "bin" / "gpufleet"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*args)`` -> typer Result, with a private config dir and no env credentials."""
    monkeypatch.setenv("GPUFLEET_CONFIG_DIR", str(tmp_path / "config"))
    for var in ("GPUFLEET_URL", "GPUFLEET_API_KEY", "GPUFLEET_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args))

    return run


def test_login_push_submit_wait_infer_list(
    cli: Any, cp_url: str, admin_key: str, add_sub_dir: Path, tmp_path: Path
) -> None:
    r = cli("login", "--url", cp_url, "--api-key", admin_key)
    assert r.exit_code == 0, r.output
    stored = tmp_path / "config" / "credentials.json"
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert cli("login", "--url", cp_url, "--api-key", "gf_wrongwrongwrong").exit_code == 3

    r = cli("-o", "json", "models", "push", str(add_sub_dir))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["state"] == "READY"
    r = cli("models", "list")
    assert r.exit_code == 0 and "add_sub" in r.stdout and "1:READY" in r.stdout

    token = json.loads(cli("-o", "json", "admin", "join-token", "--label", "k=v").stdout)
    with FakeRunner(cp_url, token["join_token"]) as runner:
        r = cli(
            "-o", "json", "jobs", "submit", "add_sub", "--wait",
            "--input", "INPUT0=[[1,2,3,4]]", "--input", "INPUT1=[[1,1,1,1]]",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        job = json.loads(r.stdout)
        assert job["status"] == "SUCCEEDED"
        assert job["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]

        np.save(tmp_path / "a.npy", np.array([[2, 2, 2, 2]], np.float32))
        r = cli(
            "-o", "json", "infer", "add_sub",
            "--input", f"INPUT0=@{tmp_path / 'a.npy'}", "--input", "INPUT1=[[1,1,1,1]]",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        outputs = json.loads(r.stdout)["outputs"]
        assert outputs["OUTPUT1"] == {"datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}

        r = cli("infer", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]")
        assert r.exit_code == 0 and "OUTPUT0" in r.stdout and "FP32" in r.stdout
        runners = json.loads(cli("-o", "json", "runners", "list").stdout)["runners"]
        assert [x["id"] for x in runners] == [runner.runner_id]
        assert cli("runners", "list").exit_code == 0

    listed = json.loads(cli("-o", "json", "jobs", "list", "--limit", "2").stdout)["jobs"]
    assert len(listed) == 2
    r = cli("jobs", "get", job["id"])
    assert r.exit_code == 0 and "SUCCEEDED" in r.stdout
    assert cli("jobs", "cancel", job["id"]).exit_code == 5  # already terminal
    assert cli("jobs", "get", "job_missing").exit_code == 4
    r = cli(
        "-o",
        "json",
        "jobs",
        "submit",
        "add_sub",
        "-i",
        "INPUT0:INT32=[[1,2,3,4]]",
        "-i",
        "INPUT1=[[1,1,1,1]]",
    )
    assert r.exit_code == 6
    assert json.loads(r.stderr)["error"]["code"] == "invalid_request"


def test_admin_keys_and_queued_job_lifecycle(
    cli: Any, cp_url: str, admin_key: str, ready_model: Any
) -> None:
    base = ["--url", cp_url, "--api-key", admin_key]
    r = cli(
        *base,
        "-o",
        "json",
        "admin",
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "viewer",
        "--name",
        "ro",
    )
    assert r.exit_code == 0, r.output
    key = json.loads(r.stdout)
    assert (
        cli("--url", cp_url, "--api-key", key["api_key"], "models", "get", "add_sub").exit_code == 0
    )
    submit = ["jobs", "submit", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]"]
    assert cli("--url", cp_url, "--api-key", key["api_key"], *submit).exit_code == 3  # viewer
    assert cli(*base, "admin", "keys", "revoke", key["id"]).exit_code == 0
    assert cli("--url", cp_url, "--api-key", key["api_key"], "models", "list").exit_code == 3

    job = json.loads(cli(*base, "-o", "json", *submit).stdout)
    assert job["status"] == "QUEUED"
    assert cli(*base, "jobs", "wait", job["id"], "--timeout", "0.3").exit_code == 7
    r = cli(*base, "-o", "json", "jobs", "cancel", job["id"])
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "CANCELLED"
    assert cli(*base, "jobs", "wait", job["id"]).exit_code == 1  # ended without success
    assert cli(*base, "models", "delete", "add_sub", "1", "--yes").exit_code == 0
    assert cli(*base, *submit).exit_code == 4  # model_not_found


def test_real_subprocesses(tmp_path: Path, add_sub_dir: Path) -> None:
    """``gpufleet`` as a process against ``python -m control_plane serve --embedded`` (on a
    data dir of its own: the default one is the user's, and persists)."""
    key_file = tmp_path / "admin.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEET_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "control_plane", "serve", "--embedded", "--port", "0",
         "--data-dir", str(tmp_path / "data"), "--admin-key-file", str(key_file)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = ""
        for line in server.stdout:
            if line.startswith(READY_PREFIX):
                url = line[len(READY_PREFIX) :].strip()
                break
        assert url, "control plane did not start"
        cli_env = {
            **env,
            "GPUFLEET_URL": url,
            "GPUFLEET_API_KEY": key_file.read_text().strip(),
            "GPUFLEET_CONFIG_DIR": str(tmp_path / "cfg"),
        }

        def gpufleet(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(GPUFLEET), "-o", "json", *args],
                env=cli_env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        pushed = gpufleet("models", "push", str(add_sub_dir))
        assert pushed.returncode == 0, pushed.stderr
        token = json.loads(gpufleet("admin", "join-token").stdout)["join_token"]
        with FakeRunner(url, token):
            done = gpufleet(
                "infer", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[4,3,2,1]]"
            )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["outputs"]["OUTPUT0"]["data"] == [5.0] * 4
        missing = gpufleet("jobs", "get", "job_nope")
        assert missing.returncode == 4
        assert json.loads(missing.stderr)["error"]["code"] == "not_found"
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_credentials_combine_and_token_prints_an_access_token(
    cli: Any, cp_url: str, admin_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("login", "--url", cp_url, "--api-key", admin_key).exit_code == 0
    # a URL flag with the saved key (they used to replace each other)
    r = cli("--url", cp_url, "-o", "json", "token")
    assert r.exit_code == 0, r.output
    access = json.loads(r.stdout)["access_token"]
    assert access.count(".") == 2  # a JWT
    # env key + saved URL
    monkeypatch.setenv("GPUFLEET_API_KEY", admin_key)
    r = cli("token")
    assert r.exit_code == 0 and r.stdout.strip().count(".") == 2
    # the printed token and the API key itself both work as bearer tokens
    for bearer in (access, admin_key):
        got = httpx.get(f"{cp_url}/v1/jobs", headers={"Authorization": f"Bearer {bearer}"})
        assert got.status_code == 200, got.text
    # the saved key is never sent to another control plane
    monkeypatch.delenv("GPUFLEET_API_KEY")
    r = cli("--url", "http://127.0.0.1:9", "token")
    assert r.exit_code != 0 and "no credentials for http://127.0.0.1:9" in r.output


def test_infer_timeout_says_the_job_is_still_queued_and_can_cancel_it(
    cli: Any, cp_url: str, admin_key: str, add_sub_dir: Path
) -> None:
    assert cli("login", "--url", cp_url, "--api-key", admin_key).exit_code == 0
    assert cli("models", "push", str(add_sub_dir)).exit_code == 0
    args = ("infer", "add_sub", "-i", "INPUT0=[[1,2,3,4]]", "-i", "INPUT1=[[1,1,1,1]]")
    r = cli(*args, "--timeout", "1")
    assert r.exit_code == 7, r.output
    said = " ".join(r.stderr.split())  # rich wraps at the terminal's width
    assert "still QUEUED" in said and "no healthy runner is connected" in said
    assert "gpufleet jobs cancel job_" in said
    queued = json.loads(cli("-o", "json", "jobs", "list").stdout)["jobs"]
    assert [j["status"] for j in queued] == ["QUEUED"]

    r = cli("-o", "json", *args, "--timeout", "1", "--cancel-on-timeout")
    assert r.exit_code == 7
    assert json.loads(r.stderr)["error"]["code"] == "WaitTimeoutError"
    listed = json.loads(cli("-o", "json", "jobs", "list").stdout)["jobs"]
    assert [j["status"] for j in listed] == ["CANCELLED", "QUEUED"]  # newest first
