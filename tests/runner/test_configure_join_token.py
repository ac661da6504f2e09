"""`gpufleet-runner configure` asks the control plane whether the join token would register
a runner (``POST /v1/runners/join-tokens/check``, using none of it) before it writes the
config: real processes (a control plane on a loopback socket, the configure command)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from gpufleet import Client

from runner.credentials import Credentials, save_credentials
from tests.helpers.procs import ControlPlaneProc, start_control_plane


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneProc]:
    proc = start_control_plane(tmp_path_factory.mktemp("cp"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(cp: ControlPlaneProc) -> Iterator[Client]:
    with Client(cp.url, api_key=cp.admin_key, timeout=30.0) as client:
        yield client


def configure(cp: ControlPlaneProc, config: Path, token: str) -> subprocess.CompletedProcess[str]:
    """``gpufleet-runner configure`` as a process (what the console script runs)."""
    args = ["configure", "--yes", "--config", str(config), "--control-plane-url", cp.url]
    args += ["--join-token", token, "--backend", "mock", "--state-dir", str(config.parent)]
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
            "HOME": str(config.parent),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # a checkout's code wins
        },
        check=False,
    )


def test_an_accepted_token_is_written_and_not_used(
    cp: ControlPlaneProc, admin: Client, tmp_path: Path
) -> None:
    created = admin.admin.create_join_token(region="eu-west-1", max_uses=2)
    config = tmp_path / "runner.yaml"
    r = configure(cp, config, created.join_token)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert f"join token {created.id}: accepted (region eu-west-1, 2 use(s) left" in out, out
    assert f"next: gpufleet-runner start --config {config}" in out
    assert yaml.safe_load(config.read_text())["join_token"] == created.join_token
    (listed,) = [t for t in admin.admin.list_join_tokens() if t.id == created.id]
    assert listed.uses == 0  # asking used nothing


@pytest.mark.parametrize("how", ["forged", "used up", "revoked"])
def test_a_refused_token_exits_2_says_what_to_do_and_writes_nothing(
    cp: ControlPlaneProc, admin: Client, tmp_path: Path, how: str
) -> None:
    if how == "forged":
        token, reason = "gfj_" + "x" * 40, "invalid or expired join token"
    else:
        created = admin.admin.create_join_token()
        token = created.join_token
        if how == "used up":
            r = httpx.post(
                f"{cp.url}/v1/runners/register", json={"join_token": token, "name": "first"}
            )
            assert r.status_code == 201, r.text
            reason = "join token used up (it registers 1 runner(s))"
        else:
            assert created.id is not None
            admin.admin.revoke_join_token(created.id)
            reason = "invalid or expired join token"
    config = tmp_path / "runner.yaml"
    r = configure(cp, config, token)
    assert r.returncode == 2, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert f"error: the control plane at {cp.url} refused the join token: {reason}" in out, out
    assert "`gpufleet admin join-token`" in out and "nothing was written" in out, out
    assert "Traceback" not in r.stdout + r.stderr
    assert not config.exists()


def test_a_registered_host_only_gets_a_warning(
    cp: ControlPlaneProc, admin: Client, tmp_path: Path
) -> None:
    """Re-running configure on a host that registered already: its used-up token is not
    needed any more (the runner has its own credentials)."""
    token = admin.admin.create_join_token().join_token
    registered = httpx.post(
        f"{cp.url}/v1/runners/register", json={"join_token": token, "name": "h"}
    ).json()
    save_credentials(
        tmp_path / "credentials.json",
        Credentials(registered["runner_id"], registered["secret"], cp.url),
    )
    config = tmp_path / "runner.yaml"
    r = configure(cp, config, token)
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert f"registered already as {registered['runner_id']}" in out, out
    assert config.exists()
